"""Rows of local JSONL / JSON / parquet files or a ``datasets`` name, each with its origin.

A record is ``(origin, row)`` where ``origin`` ("file:line") names where the row came from, so
every later error about a row can say which one. Files are found as given or under the data
directory (``jaxrlhf.data.paths``); nothing is downloaded.
"""
from __future__ import annotations

import gzip
import json
import os

from jaxrlhf.data import paths

Record = tuple[str, dict]  # (origin "file:line", row)
_SUFFIXES = (".jsonl", ".jsonl.gz", ".json", ".parquet")


def _read_jsonl(path: os.PathLike) -> list[Record]:
    opener = gzip.open if str(path).endswith(".gz") else open
    records = []
    with opener(path, "rt", encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            origin = f"{path}:{lineno}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{origin}: malformed JSON ({e.msg})") from None
            if not isinstance(row, dict):
                raise ValueError(f"{origin}: expected a JSON object, got {type(row).__name__}")
            records.append((origin, row))
    return records


def _read_json(path: os.PathLike) -> list[Record]:
    try:
        with open(path, encoding="utf-8") as f:
            rows = json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}:{e.lineno}: malformed JSON ({e.msg})") from None
    if not isinstance(rows, list):
        raise ValueError(f"{path}: expected a JSON list of objects")
    return [(f"{path}:row {i}", row) for i, row in enumerate(rows)]


def _read_parquet(path: os.PathLike) -> list[Record]:
    import pyarrow.parquet as pq
    return [(f"{path}:row {i}", row) for i, row in enumerate(pq.read_table(path).to_pylist())]


def _read_hf_dataset(name: str, split: str) -> list[Record]:
    import datasets
    try:
        ds = datasets.load_dataset(name, split=split)
    except Exception as e:  # offline / missing: say so clearly
        raise FileNotFoundError(
            f"{name!r} is neither a local file nor a loadable `datasets` dataset "
            f"(split {split!r}); jaxrlhf assumes no network, so download it and pass a "
            f"local path. Cause: {type(e).__name__}: {e}") from e
    return [(f"{name}[{split}]:row {i}", row) for i, row in enumerate(ds)]


def load_records(source: str, split: str = "train") -> list[Record]:
    """``(origin, row)`` pairs from a local ``.jsonl``/``.jsonl.gz``/``.json``/``.parquet``
    file (absolute, relative, or under the data dir) or a ``datasets`` name."""
    path = None
    try:
        path = paths.resolve(source)
    except FileNotFoundError:
        pass
    if path is None or not path.exists():
        if source.endswith(_SUFFIXES):
            raise FileNotFoundError(f"{source!r} not found as given or under the data dir "
                                    f"(set ${paths.ENV_VAR})")
        return _read_hf_dataset(source, split)
    name = path.name
    if name.endswith((".jsonl", ".jsonl.gz")):
        return _read_jsonl(path)
    if name.endswith(".json"):
        return _read_json(path)
    if name.endswith(".parquet"):
        return _read_parquet(path)
    raise ValueError(f"{path}: unsupported file type (use .jsonl, .jsonl.gz, .json, .parquet)")
