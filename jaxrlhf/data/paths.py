"""Where the shared data lives: ``$JAXRLHF_DATA_DIR`` or ``<repo>/../shared/data``."""
from __future__ import annotations

import os
import pathlib

from jaxrlhf.errors import MissingInputError

ENV_VAR = "JAXRLHF_DATA_DIR"
_REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]


def data_dir() -> pathlib.Path:
    """The data directory: ``$JAXRLHF_DATA_DIR`` if set, else the first existing of
    ``<repo root>/../shared/data`` and ``./../shared/data``."""
    env = os.environ.get(ENV_VAR)
    if env:
        path = pathlib.Path(env).expanduser()
        if not path.is_dir():
            raise MissingInputError(f"{ENV_VAR}={env!r} is not a directory")
        return path
    candidates = [_REPO_ROOT.parent / "shared" / "data", pathlib.Path.cwd().parent / "shared" / "data"]
    for path in candidates:
        if path.is_dir():
            return path
    raise MissingInputError(
        f"no data directory found (tried {[str(c) for c in candidates]}); "
        f"set {ENV_VAR} to the directory holding the datasets")


def resolve(path: str | os.PathLike) -> pathlib.Path:
    """``path`` as given if it exists, else relative to :func:`data_dir`."""
    p = pathlib.Path(path).expanduser()
    if p.exists():
        return p
    return data_dir() / p
