"""Rows of local JSONL / JSON / parquet files or a ``datasets`` name, each with its origin.

A record is ``(origin, row)`` where ``origin`` ("file:line") names where the row came from, so
every later error about a row can say which one. Files are found as given or under the data
directory (``jaxrlhf.data.paths``); nothing is downloaded. Whatever is wrong with a file —
missing, a directory, not gzip, not UTF-8, not JSON, not objects, no rows at all — is a
``DataError`` (``MissingInputError`` for a missing file) naming the file and, where there is
one, the line.
"""
from __future__ import annotations

import gzip
import json
import os
import zlib
from collections.abc import Iterator
from typing import Any

from jaxrlhf.data import paths
from jaxrlhf.errors import DataError, MissingInputError

Record = tuple[str, dict]  # (origin "file:line", row)
SUFFIXES = (".jsonl", ".jsonl.gz", ".json", ".parquet")


def describe(value: Any) -> str:
    """A JSON value's kind and a short preview, for error messages: ``a number (3)``."""
    kind = ("null" if value is None else "a boolean" if isinstance(value, bool)
            else "a number" if isinstance(value, (int, float)) else "a string"
            if isinstance(value, str) else "a list" if isinstance(value, list)
            else "an object" if isinstance(value, dict) else type(value).__name__)
    preview = repr(value)
    return f"{kind} ({preview[:40] + '...' if len(preview) > 40 else preview})"


def text_lines(path: os.PathLike | str) -> Iterator[tuple[int, str]]:
    """``(line number, line)`` of a UTF-8 text file, gzip-compressed if it ends in ``.gz``."""
    if os.path.isdir(path):
        raise DataError(f"{path}: is a directory, not a data file")
    gzipped = str(path).endswith(".gz")
    try:
        with (gzip.open if gzipped else open)(path, "rb") as f:
            for lineno, raw in enumerate(f, start=1):
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError as e:
                    raise DataError(f"{path}:{lineno}: not UTF-8 text (byte {raw[e.start]:#04x} "
                                    f"at column {e.start + 1}); re-encode the file as UTF-8"
                                    ) from None
                yield lineno, line.removeprefix("\ufeff") if lineno == 1 else line
    except (gzip.BadGzipFile, EOFError, zlib.error) as e:
        raise DataError(f"{path}: not a complete gzip file ({e}); recompress it, or drop the "
                        "'.gz' suffix if it is plain text") from None
    except PermissionError as e:
        raise DataError(f"{path}: cannot be read ({e.strerror})") from None


def _parse(text: str, origin: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(f"{origin}: malformed JSON ({e.msg} at column {e.pos + 1})") from None
    except RecursionError:
        raise DataError(f"{origin}: JSON nested too deeply") from None


def _read_jsonl(path: os.PathLike) -> list[Record]:
    records, lines = [], 0
    for lineno, line in text_lines(path):
        lines += 1
        if not line.strip():
            continue
        origin = f"{path}:{lineno}"
        row = _parse(line, origin)
        if not isinstance(row, dict):
            raise DataError(f"{origin}: expected a JSON object, got {describe(row)}")
        records.append((origin, row))
    if not records:
        raise DataError(f"{path}: no rows (the file is empty)" if not lines else
                        f"{path}: no rows ({lines} lines, all blank)")
    return records


def _read_json(path: os.PathLike) -> list[Record]:
    text = "".join(line for _, line in text_lines(path))
    if not text.strip():
        raise DataError(f"{path}: no rows (the file is empty)")
    try:
        rows = json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(f"{path}:{e.lineno}: malformed JSON ({e.msg})") from None
    except RecursionError:
        raise DataError(f"{path}: JSON nested too deeply") from None
    if not isinstance(rows, list):
        raise DataError(f"{path}: expected a JSON list of objects, got {describe(rows)}")
    if not rows:
        raise DataError(f"{path}: no rows (an empty JSON list)")
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            raise DataError(f"{path}:row {i}: expected a JSON object, got {describe(row)}")
    return [(f"{path}:row {i}", row) for i, row in enumerate(rows)]


def _read_parquet(path: os.PathLike) -> list[Record]:
    import pyarrow
    import pyarrow.parquet as pq
    try:
        rows = pq.read_table(path).to_pylist()
    except (pyarrow.ArrowException, OSError) as e:
        raise DataError(f"{path}: not a readable parquet file ({str(e).splitlines()[0]})"
                        ) from None
    if not rows:
        raise DataError(f"{path}: no rows (an empty table)")
    return [(f"{path}:row {i}", row) for i, row in enumerate(rows)]


def _read_hf_dataset(name: str, split: str) -> list[Record]:
    import datasets
    try:
        ds = datasets.load_dataset(name, split=split)
    except Exception as e:  # offline / missing: say so clearly
        raise MissingInputError(
            f"{name!r} is neither a local file nor a loadable `datasets` dataset "
            f"(split {split!r}); jaxrlhf assumes no network, so download it and pass a "
            f"local path. Cause: {type(e).__name__}: {str(e).splitlines()[0][:200]}"
        ) from None
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
        if source.endswith(SUFFIXES) or source.startswith(("/", "./", "../", "~")):
            raise MissingInputError(f"{source!r}: no such file, as given or under the data "
                                    f"dir (set ${paths.ENV_VAR})")
        return _read_hf_dataset(source, split)
    name = path.name
    if path.is_dir():
        raise DataError(f"{path}: is a directory, not a data file")
    if name.endswith((".jsonl", ".jsonl.gz")):
        return _read_jsonl(path)
    if name.endswith(".json"):
        return _read_json(path)
    if name.endswith(".parquet"):
        return _read_parquet(path)
    raise DataError(f"{path}: unsupported file type (use .jsonl, .jsonl.gz, .json, .parquet)")
