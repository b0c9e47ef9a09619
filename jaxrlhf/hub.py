"""Hugging Face hub ids wherever a local HF directory is accepted: ``org/name`` or
``org/name@revision`` (a branch, tag or commit) in ``model_init``, ``data.tokenizer`` and a
LoRA run's base, resolved by ``huggingface_hub.snapshot_download`` to a directory of the
local Hugging Face cache, so ``HF_HOME`` / ``HF_HUB_CACHE``, ``HF_HUB_OFFLINE=1``, ``HF_TOKEN``
and an already-cached snapshot behave as for every HF library.

Rules (:func:`resolve_hf_dir`): an existing local directory of that name wins and is used as
it is; a string that is neither a directory nor a well-formed id is returned unchanged, for
the caller's own "not a directory" error; an id that cannot be resolved (not cached while
offline, not on the hub, a missing revision, a gated repository) is one line naming the
field, the id and the revision, and what to do (``MissingInputError``). Only the top-level
files the loaders read are fetched: ``*.json`` and the tokenizer's files, and for a model also
``*.safetensors`` (never ``*.bin``, ``*.pth`` or sub-folders).
"""
from __future__ import annotations

import os
import re

from huggingface_hub import constants, errors, snapshot_download
from huggingface_hub.utils import validate_repo_id

from jaxrlhf.errors import MissingInputError

TOKENIZER_PATTERNS = ("*.json", "*.model", "*.txt", "tokenizer*")
MODEL_PATTERNS = ("*.safetensors", *TOKENIZER_PATTERNS)
IGNORE_PATTERNS = ("*/*",)      # files in sub-folders: no loader reads them
_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*")
_COMMIT = re.compile(r"[0-9a-f]{40}")


def parse_hub_id(value: str) -> tuple[str, str | None] | None:
    """``(repo_id, revision or None)`` of a well-formed ``org/name[@revision]``, else None."""
    if not isinstance(value, str):
        return None
    repo, at, revision = value.partition("@")
    if (at and not revision.strip()) or revision != revision.strip() or not _ID.fullmatch(repo):
        return None
    try:
        validate_repo_id(repo)
    except errors.HFValidationError:
        return None
    return repo, revision or None


def is_hub_id(value: str) -> bool:
    """Whether ``value`` names a hub repository (a local directory of that name wins)."""
    return not os.path.isdir(value) and parse_hub_id(value) is not None


def _problem(error: Exception, repo: str, revision: str) -> tuple[str, str]:
    """(what went wrong, what to do) for a failed ``snapshot_download``, one clause each."""
    where = f"revision {revision!r} of the hub repository {repo!r}"
    fetch = f"download it with `hf download {repo}" + (
        f" --revision {revision}`" if revision != constants.DEFAULT_REVISION else "`")
    login = "log in (`hf auth login` or HF_TOKEN)"
    if isinstance(error, errors.GatedRepoError):
        return f"the hub repository {repo!r} is gated", f"accept its terms on the hub and {login}"
    if isinstance(error, errors.RepositoryNotFoundError):
        return (f"the hub has no repository {repo!r} (or it is private)",
                f"check the id or {login}")
    if isinstance(error, errors.RevisionNotFoundError):
        return f"the hub repository {repo!r} has no revision {revision!r}", "name another one"
    if isinstance(error, errors.IncompleteSnapshotError):
        return f"the cached snapshot of {where} is incomplete and the hub cannot be reached", fetch
    if isinstance(error, errors.LocalEntryNotFoundError):
        why = ("HF_HUB_OFFLINE=1 forbids downloading it" if constants.is_offline_mode()
               else "the hub cannot be reached")
        return f"{where} is not in the local Hugging Face cache and {why}", fetch
    first = (str(error).strip().splitlines() or [""])[0]
    return f"resolving {where} failed ({type(error).__name__}: {first})", fetch


def resolve_hf_dir(value: str, *, field: str, weights: bool = True) -> str:
    """The local directory ``value`` names: itself when it is a directory (or not a hub id,
    left to the caller's own check), else the cached snapshot of the hub id
    ``org/name[@revision]``, downloaded unless cached (``weights`` False: the tokenizer's
    files only). Raises MissingInputError naming ``field`` when the id cannot be resolved."""
    parsed = None if os.path.isdir(value) else parse_hub_id(value)
    if parsed is None:
        return value
    repo, revision = parsed
    try:
        return snapshot_download(repo, revision=revision,
                                 allow_patterns=list(MODEL_PATTERNS if weights
                                                     else TOKENIZER_PATTERNS),
                                 ignore_patterns=list(IGNORE_PATTERNS))
    except (OSError, ValueError) as e:   # the hub's errors are OSErrors or ValueErrors
        problem, advice = _problem(e, repo, revision or constants.DEFAULT_REVISION)
        raise MissingInputError(f"{field}={value!r}: {problem}; {advice}, or pass a local "
                                "directory") from None


def pinned(value: str, *, field: str) -> str:
    """How a run records the HF directory or hub id ``value`` it started from: a local
    directory as its absolute path, a hub id as ``org/name@<commit>`` of the snapshot it
    resolved to (so a later load reads the same weights even after the branch moves)."""
    parsed = None if os.path.isdir(value) else parse_hub_id(value)
    if parsed is None:
        return os.path.abspath(value)
    commit = os.path.basename(os.path.normpath(resolve_hf_dir(value, field=field)))
    return f"{parsed[0]}@{commit}" if _COMMIT.fullmatch(commit) else value
