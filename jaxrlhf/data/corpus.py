"""Raw text for pretraining: a list of documents (strings) from local files, a ``datasets``
name, or a generator.

What a document is depends on the source:

- a ``.txt`` (or ``.txt.gz``) file: each paragraph, i.e. the runs of lines between blank
  (empty or whitespace-only) lines, with its line breaks kept as ``\\n``. In Tiny
  Shakespeare (``tinyshakespeare/input.txt`` under the data dir) a paragraph is one
  speaker's turn, e.g. ``"All:\\nSpeak, speak."``: 7,222 documents.
- a directory: each ``.txt`` file in it (not its subdirectories), whole, in name order.
- a ``.jsonl`` / ``.jsonl.gz`` / ``.json`` / ``.parquet`` file or a ``datasets`` name: the
  string field ``field`` (``"text"``) of each row (``jaxrlhf.data.records.load_records``),
  e.g. the IMDb reviews of ``imdb/train.jsonl.gz``.

A row without the field or whose field is not a string is a ``DataError`` naming its file
and line; so is a corpus without any text. :func:`generated_corpus` makes a small synthetic
corpus with learnable structure, for offline tests and quickstarts.
"""
from __future__ import annotations

import pathlib
import random

from jaxrlhf.data import paths
from jaxrlhf.data.records import SUFFIXES, describe, load_records, text_lines
from jaxrlhf.errors import DataError, MissingInputError

TEXT_SUFFIXES = (".txt", ".txt.gz")


def _paragraphs(path: pathlib.Path) -> list[str]:
    """The paragraphs of a UTF-8 text file: runs of non-blank lines, joined with ``\\n``."""
    docs, lines = [], []
    for _, line in text_lines(path):
        if line.strip():
            lines.append(line.rstrip("\r\n"))
        elif lines:
            docs.append("\n".join(lines))
            lines = []
    if lines:
        docs.append("\n".join(lines))
    return docs


def _directory(path: pathlib.Path) -> list[str]:
    """The whole text of each ``.txt`` file directly in ``path``, in name order."""
    files = sorted(p for p in path.iterdir() if p.is_file() and p.name.endswith(".txt"))
    if not files:
        raise DataError(f"{path}: a text directory needs .txt files (one document each), "
                        "and this one holds none")
    return ["".join(line for _, line in text_lines(f)) for f in files]


def _field_text(row: dict, origin: str, field: str) -> str:
    if field not in row:
        raise DataError(f"{origin}: no text field {field!r} (keys: {sorted(row)}); name the "
                        "field that holds each document's text")
    if not isinstance(row[field], str):
        raise DataError(f"{origin}: field {field!r} must be a string, got "
                        f"{describe(row[field])}")
    return row[field]


def _local(source: str) -> pathlib.Path | None:
    """``source`` as an existing path, as given or under the data dir, else None."""
    try:
        path = paths.resolve(source)
    except FileNotFoundError:  # no data dir: only a path as given can exist
        return None
    return path if path.exists() else None


def load_texts(source: str, split: str = "train", field: str = "text") -> list[str]:
    """The documents of ``source``: a ``.txt`` file (one per paragraph), a directory of
    ``.txt`` files (one per file), a records file or a ``datasets`` name (the string
    ``field`` of each row; ``split`` chooses a dataset's split, a file is one split)."""
    path = _local(source)
    if path is None and source.endswith(TEXT_SUFFIXES):
        raise MissingInputError(f"{source!r}: no such file, as given or under the data dir "
                                f"(set ${paths.ENV_VAR})")
    if path is not None and path.is_dir():
        texts = _directory(path)
    elif path is not None and path.name.endswith(TEXT_SUFFIXES):
        texts = _paragraphs(path)
    elif path is not None and not path.name.endswith(SUFFIXES):
        raise DataError(f"{path}: unsupported file type for a corpus (use a directory of "
                        f".txt files or one of {', '.join(TEXT_SUFFIXES + SUFFIXES)})")
    else:  # a records file, or a `datasets` name
        texts = [_field_text(row, origin, field) for origin, row in load_records(source, split)]
    if not any(text.strip() for text in texts):
        raise DataError(f"{source}: no text ({len(texts)} documents, all empty or "
                        "whitespace); a pretraining corpus needs some")
    return texts


# A tiny world for generated_corpus: each document tells of one animal at one place.
_ANIMALS = ("fox", "dog", "cat", "owl", "bear", "hare", "crow", "wolf", "mouse", "duck")
_COLOURS = ("red", "brown", "grey", "white", "black", "golden")
_PLACES = ("forest", "river", "hill", "garden", "field", "barn", "lake", "meadow")
_THINGS = ("an apple", "a stone", "a stick", "a feather", "an acorn", "a shell", "a berry")
_VERBS = ("found", "carried", "hid", "dropped", "ate", "buried", "lost")
_DAYS = ("one", "two", "three", "four", "five", "six")


def _story(rng: random.Random) -> str:
    """One document: an animal, its place, a numbered day per sentence, a closing line."""
    animal, colour, home = rng.choice(_ANIMALS), rng.choice(_COLOURS), rng.choice(_PLACES)
    lines = [f"The {colour} {animal} lived by the {home}."]
    for day in _DAYS[:rng.randint(2, len(_DAYS))]:
        place = rng.choice(_PLACES)
        lines.append(f"On day {day}, the {animal} {rng.choice(_VERBS)} "
                     f"{rng.choice(_THINGS)} near the {place}.")
    lines.append(f"Then the {colour} {animal} went home to the {home}.")
    return "\n".join(lines)


def generated_corpus(n_docs: int, seed: int) -> list[str]:
    """``n_docs`` short synthetic stories, the same for the same ``seed``: English-like
    text from templates whose structure a tiny model learns within a hundred steps — fixed
    phrasing, days counted in order, and the animal, colour and home of a story's first
    line repeated in its last (learnable only from context)."""
    rng = random.Random(seed)
    return [_story(rng) for _ in range(n_docs)]
