"""Python reward functions (``ppo.reward_fns``): ``"module:function"`` names of host functions
that score decoded completions, as TRL's ``reward_funcs``.

Each function is called once per rollout with keyword arguments ``prompts`` and
``completions`` (``list[str]``, one entry per response row; a prompt is the dataset's text,
repeated for each of its ``ppo.num_generations`` responses) and every other column of the
prompts' examples (``**columns``, lists aligned with the rows), and returns one float per
completion. The rollout adds their ``ppo.reward_weights``-weighted sum to the sequence
score (``jaxrlhf.rl.ppo``). The call is a ``jax.pure_callback`` (as the text gold reward,
``tasks.base.traceable_gold``), so a PPO iteration stays one compiled program.

A function that raises, returns the wrong number of scores or a non-finite one is not
raised through XLA (whose error would bury it in a long runtime error): the callback
records the first such failure as one line naming the function and the example, returns
zeros, and the stage shell raises it as a :class:`RewardFunctionError` after the step
(:meth:`HostRewardFunctions.raise_failure_after`), before anything is logged or checkpointed.
"""
from __future__ import annotations

import importlib
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxrlhf.data.tokenizer import decode_rows
from jaxrlhf.errors import ConfigError, RewardFunctionError

# (prompt_index [batch], response [batch, resp], mask [batch, resp]) -> [batch, functions]
ScoresFn = Callable[[jax.Array, jax.Array, jax.Array], jax.Array]
# Example fields that are not passed as columns: the prompt is ``prompts``; a
# demonstration's completion is not the policy's (TRL leaves both out as well).
NOT_COLUMNS = ("prompt", "completion")


def function_name(spec: str) -> str:
    """The name a function's metric carries (``objective/reward_fn/<name>``): the part of
    ``"module:function"`` after the colon."""
    return spec.rpartition(":")[2]


def resolve(spec: str, field: str = "ppo.reward_fns") -> Callable[..., Any]:
    """The callable that ``"module:function"`` names (``function`` may be dotted:
    ``module:Class.method``); a ConfigError naming ``field`` when it is malformed, the
    module does not import or has no such callable."""
    module_name, colon, attr = spec.partition(":") if isinstance(spec, str) else ("", "", "")
    if not (colon and module_name and attr):
        raise ConfigError(f"config.{field} entry {spec!r} is not 'module:function' (e.g. "
                          "'my_rewards:length_reward', the module importable from the "
                          "working directory or PYTHONPATH)")
    try:
        obj: Any = importlib.import_module(module_name)
    except Exception as e:   # the user's module failed to import: say so in one line
        raise ConfigError(f"config.{field} entry {spec!r}: module {module_name!r} cannot be "
                          f"imported ({type(e).__name__}: {e}); put it on PYTHONPATH") from None
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ConfigError(f"config.{field} entry {spec!r}: {module_name!r} has no "
                              f"attribute {attr!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        kind = type(obj).__name__
        raise ConfigError(f"config.{field} entry {spec!r} is not callable "
                          f"({'an' if kind[0] in 'aeiou' else 'a'} {kind})")
    return obj


def _clip(text: str, limit: int = 40) -> str:
    return repr(text if len(text) <= limit else text[:limit] + "...")


def _example(prompt_index: Sequence[int], prompts: Sequence[str], completions: Sequence[str],
             row: int) -> str:
    return (f"completion {row} of prompt {int(prompt_index[row])} "
            f"({_clip(prompts[row])} -> {_clip(completions[row])})")


def _first_raising_row(fn: Callable, prompts, completions, columns) -> int | None:
    """The first row on which ``fn`` raises when called on that row alone, or None."""
    for row in range(len(prompts)):
        try:
            fn(prompts=[prompts[row]], completions=[completions[row]],
               **{k: [v[row]] for k, v in columns.items()})
        except Exception:
            return row
    return None


def call_reward_function(spec: str, fn: Callable, prompt_index: Sequence[int],
                         prompts: list[str], completions: list[str],
                         columns: Mapping[str, list]) -> np.ndarray:
    """``fn``'s scores of the rows, float32 [rows]; a one-line RewardFunctionError naming
    ``spec`` and the (first) offending example when it raises, returns the wrong number of
    scores, or a non-finite one."""
    where = f"reward function {spec!r}"
    try:
        out = fn(prompts=prompts, completions=completions, **columns)
    except Exception as e:
        row = _first_raising_row(fn, prompts, completions, columns)
        on = (_example(prompt_index, prompts, completions, row) if row is not None
              else f"a batch of {len(prompts)} completions")
        raise RewardFunctionError(f"{where} raised {type(e).__name__}: {e} on {on}") from None
    try:
        scores = np.asarray(out, np.float64).reshape(-1)
    except (TypeError, ValueError):
        raise RewardFunctionError(f"{where} returned {type(out).__name__}, not one number per "
                                  f"completion, for {len(prompts)} completions (the first: "
                                  f"{_example(prompt_index, prompts, completions, 0)})") from None
    if np.ndim(out) != 1 or len(scores) != len(completions):
        raise RewardFunctionError(f"{where} returned {np.shape(out)} scores for "
                                  f"{len(completions)} completions (the first: "
                                  f"{_example(prompt_index, prompts, completions, 0)}); "
                                  "return one float per completion")
    bad = np.flatnonzero(~np.isfinite(scores))
    if bad.size:
        raise RewardFunctionError(f"{where} returned {scores[bad[0]]} for "
                                  f"{_example(prompt_index, prompts, completions, bad[0])}; "
                                  "scores must be finite")
    return scores.astype(np.float32)


class HostRewardFunctions:
    """The reward functions of a run with the examples their rows come from; called on the
    host from inside the compiled rollout, recording (not raising) the first failure."""

    def __init__(self, specs: Sequence[str], examples: Sequence[Mapping[str, Any]], tokenizer):
        self.specs = tuple(specs)
        self.functions = tuple(resolve(spec) for spec in self.specs)
        self.examples, self.tokenizer = list(examples), tokenizer
        self.failure: str | None = None

    def scores(self, prompt_index: np.ndarray, response: np.ndarray,
               mask: np.ndarray) -> np.ndarray:
        """Every function's scores of the decoded rows, float32 [rows, functions]; zeros
        (and :attr:`failure` set) once a function failed."""
        out = np.zeros((len(prompt_index), len(self.functions)), np.float32)
        if self.failure is not None:
            return out
        rows = [self.examples[int(i)] for i in prompt_index]
        prompts = [row["prompt"] for row in rows]
        completions = decode_rows(self.tokenizer, response, mask)
        names = [k for k in (rows[0] if rows else {}) if k not in NOT_COLUMNS]
        columns = {k: [row.get(k) for row in rows] for k in names}
        try:
            for j, (spec, fn) in enumerate(zip(self.specs, self.functions)):
                out[:, j] = call_reward_function(spec, fn, prompt_index, prompts,
                                                 completions, columns)
        except RewardFunctionError as e:
            self.failure = str(e)
            out[:] = 0.0
        return out

    def traceable(self) -> ScoresFn:
        """:meth:`scores` as a traceable function (a ``jax.pure_callback``)."""
        def scores(prompt_index, response, mask):
            shape = jax.ShapeDtypeStruct((response.shape[0], len(self.functions)), jnp.float32)
            return jax.pure_callback(self.scores, shape, prompt_index, response, mask)
        return scores

    def raise_failure_after(self, outputs: Any) -> None:
        """Wait for ``outputs`` (of the step whose rollout called the functions), then raise
        the recorded failure, if any, as a RewardFunctionError."""
        jax.block_until_ready(outputs)
        if self.failure is not None:
            raise RewardFunctionError(self.failure)


def weighted_sum(function_scores: jax.Array, weights: Sequence[float]) -> jax.Array:
    """``sum_j w_j f_j(x_i)``: [rows, functions] x [functions] -> [rows]."""
    return function_scores @ jnp.asarray(weights, jnp.float32)


def check_specs(specs: Sequence[str], weights: Sequence[float]) -> None:
    """``ppo.reward_fns`` names importable, distinct functions; ``ppo.reward_weights`` is
    empty (1.0 each) or one finite number per function."""
    for spec in specs:
        resolve(spec)
    names = [function_name(spec) for spec in specs]
    for name in set(names):
        if names.count(name) > 1:
            raise ConfigError(f"config.ppo.reward_fns={tuple(specs)!r} names two functions "
                              f"called {name!r}; their metrics objective/reward_fn/{name} "
                              "would collide: give them distinct names")
    if weights and len(weights) != len(specs):
        raise ConfigError(f"config.ppo.reward_weights={tuple(weights)!r} has {len(weights)} "
                          f"weights for the {len(specs)} functions of ppo.reward_fns; give "
                          "one per function (or none: 1.0 each)")
    for w in weights:
        if isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w):
            raise ConfigError(f"config.ppo.reward_weights={tuple(weights)!r}: {w!r} is not a "
                              "finite number")
