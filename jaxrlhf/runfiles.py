"""Writing a run's files: once (by process 0), whole (atomically), and exactly once per step.

Every file a run writes into its workdir goes through this module, so two rules hold
everywhere (docs/design.md, rules 5 and 6):

* **Only process 0 writes.** On several processes each one computes the same values (the
  metrics are replicated arrays, the tokenizer and the config are built from the same
  inputs), and process 0 alone puts them on disk; the others call the same functions,
  which do nothing for them. :func:`barrier` lets every process wait for the files.
* **No half-written file.** JSON, text, figures and directories are written to a temporary
  name beside the target and renamed over it, so a kill leaves the old file or the new one.
  Step logs (``metrics.jsonl``, ``samples.jsonl``, ``perf.jsonl``) are append-only;
  :class:`StepLog` cuts them back to the restored checkpoint on resume and drops a line a
  kill left half-written, so a resumed run's logs are byte-identical to an uninterrupted
  run's.

Reading does not need process 0: every process may read a run's files (a shared
filesystem, as multi-host checkpoints need anyway).
"""
from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import jax

from jaxrlhf.errors import CheckpointError


def is_writer() -> bool:
    """Whether this process writes run files (process 0)."""
    return jax.process_index() == 0


def barrier(name: str) -> None:
    """Wait until every process reaches the barrier ``name`` (no-op on one process)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils
        multihost_utils.sync_global_devices(f"jaxrlhf:{name}")


def _temporary(path: str) -> str:
    """A name beside ``path`` that no other write uses (created by the writer, so the
    file gets the usual permissions)."""
    directory, name = os.path.split(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    return os.path.join(directory, f".{name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")


def write_file(path: str, write: Callable[[str], None]) -> None:
    """Process 0 calls ``write(tmp_path)`` and renames the result to ``path``."""
    if not is_writer():
        return
    tmp = _temporary(path)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_text(path: str, text: str) -> None:
    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
    write_file(path, write)


def write_json(path: str, value: Any) -> None:
    """``value`` as indented JSON (non-JSON values via ``str``)."""
    write_text(path, json.dumps(value, indent=2, default=str))


def write_dir(path: str, write: Callable[[str], None]) -> None:
    """Process 0 fills a temporary directory with ``write(tmp_dir)`` and renames it to
    ``path`` (which must not exist yet)."""
    if not is_writer():
        return
    tmp = _temporary(path)
    os.makedirs(tmp)
    try:
        write(tmp)
        os.rename(tmp, path)
    finally:
        if os.path.exists(tmp):
            shutil.rmtree(tmp)


def remove(path: str) -> None:
    """Process 0 removes the file ``path`` if it exists."""
    if is_writer() and os.path.exists(path):
        os.remove(path)


def set_aside(path: str, directory: str) -> str:
    """Move ``path`` into ``directory`` under a name not taken yet (``8``, ``8-1``, ...), never
    deleting anything; returns the new path (the same on every process)."""
    name = os.path.basename(path)
    target, n = os.path.join(directory, name), 0
    while os.path.exists(target):
        n += 1
        target = os.path.join(directory, f"{name}-{n}")
    barrier("set_aside:chosen")  # every process has chosen the same name
    if is_writer():
        os.makedirs(directory, exist_ok=True)
        shutil.move(path, target)
    barrier("set_aside:moved")
    return target


class StepLog:
    """A JSONL file of rows that each carry a ``"step"``, written exactly once per step.

    ``restart()`` empties it (a fresh run), ``keep_through(step)`` keeps the rows up to a
    restored checkpoint's step (a resumed run) and ``append`` adds rows. A last line
    without its newline is what a kill in the middle of a write leaves; it is dropped.
    """

    def __init__(self, path: str):
        self.path = path

    def rows(self) -> list[dict[str, Any]]:
        """The complete rows (a half-written last line is left out)."""
        return [row for _, row in self._entries()]

    def _entries(self) -> list[tuple[bytes, dict[str, Any]]]:
        """``(line, row)`` for every complete line, the line's bytes kept as written."""
        if not os.path.exists(self.path):
            return []
        with open(self.path, "rb") as f:
            lines = f.read().split(b"\n")
        entries = []
        for lineno, line in enumerate(lines[:-1], start=1):  # lines[-1]: after the last \n
            if not line.strip():
                continue
            try:
                row = json.loads(line.decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError) as e:
                raise CheckpointError(
                    f"{self.path}:{lineno}: damaged log line ({e}); a run only ever leaves "
                    "its last line half-written, so something else changed this file: "
                    "repair or remove that line, or use a new workdir") from None
            if not isinstance(row, dict) or not isinstance(row.get("step"), int):
                raise CheckpointError(f"{self.path}:{lineno}: a log row must be a JSON "
                                      "object with an integer 'step'")
            entries.append((line, row))
        return entries

    def restart(self) -> None:
        """Empty the log (a run starting from step 0)."""
        if is_writer() and os.path.exists(self.path):
            write_text(self.path, "")

    def keep_through(self, step: int) -> None:
        """Keep exactly the rows logged at or before ``step``, byte for byte; a half-written
        last line is dropped, saying so in one line."""
        if is_writer() and os.path.exists(self.path):
            with open(self.path, "rb") as f:
                torn = f.read().rsplit(b"\n", 1)[-1]
            if torn.strip():
                print(f"{self.path}: dropped its half-written last line ({len(torn)} bytes: "
                      f"{torn[:40].decode('utf-8', 'replace')!r})")
            kept = [line + b"\n" for line, row in self._entries() if row["step"] <= step]
            write_file(self.path, lambda tmp: _write_bytes(tmp, b"".join(kept)))

    def append(self, rows: Iterable[Mapping[str, Any]]) -> None:
        text = "".join(_line(row) for row in rows)
        if text and is_writer():
            os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(text)


def _line(row: Mapping[str, Any]) -> str:
    return json.dumps(dict(row)) + "\n"


def _write_bytes(path: str, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
