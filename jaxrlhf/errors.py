"""The project's own exceptions: what went wrong with the user's input, said in one line.

Every error a user can cause — a bad config value, a malformed data row, a missing or
damaged run directory, a run that diverged — is one of these, with a message that names
where (the config field, or the file and line and field) and what was expected. The
command line prints such an error as one line and exits non-zero (a traceback only with
``--debug`` or ``JAXRLHF_DEBUG=1``); any other exception is a bug and keeps its traceback
(docs/design.md, rule 6).

``ConfigError`` and ``DataError`` are also ``ValueError``s, ``MissingInputError`` a
``FileNotFoundError`` and ``DivergedError`` a ``FloatingPointError``, so callers that
catch the built-in kinds keep working.
"""
from __future__ import annotations


class JaxRLHFError(Exception):
    """Base class: a user-facing error whose message says what was wrong, where, and what
    to do."""


class ConfigError(JaxRLHFError, ValueError):
    """A config field holds a value no stage can use (the message names ``config.FIELD``)."""


class UsageError(JaxRLHFError, ValueError):
    """The command line is malformed: no command or an unknown one, stray arguments, or a
    required flag missing (the message says which, and lists the commands or flags)."""


class DataError(JaxRLHFError, ValueError):
    """A data file or row is malformed (the message names the file, line and field)."""


class MissingInputError(JaxRLHFError, FileNotFoundError):
    """A file or directory the run needs is absent (the message says how to provide it)."""


class CheckpointError(JaxRLHFError, RuntimeError):
    """No usable checkpoint: every one is damaged, or they belong to another config."""


class DivergedError(JaxRLHFError, FloatingPointError):
    """Training produced a NaN or infinity; the message names the last good checkpoint."""


class RewardFunctionError(JaxRLHFError, RuntimeError):
    """A Python reward function (``ppo.reward_fns``) raised, returned the wrong number of
    scores or a non-finite one (the message names the function and the example)."""


class UnsupportedModelError(JaxRLHFError, ValueError):
    """A Hugging Face checkpoint uses a config field, RoPE type or tensor this codebase does
    not implement (the message names it); loading it would give wrong logits."""
