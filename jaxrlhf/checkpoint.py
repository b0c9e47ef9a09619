"""Orbax checkpoints of the whole run state, restorable onto any mesh.

A checkpoint holds the train-state pytree (params, optimizer state, step, RNG and, for PPO,
the KL-controller state) plus JSON items: the data-iterator position and the config.
Saves are asynchronous; the last ``keep`` are kept (docs/design.md, rule 5).

Nothing is lost and nothing is silent: a state holding a NaN or an infinity is never
written (``DivergedError`` names the last good checkpoint instead), and resuming skips a
damaged checkpoint — an empty step directory, a missing item or ``_METADATA``, an array
file that cannot be read — saying which and why, moves it aside into
``<checkpoints>.damaged/`` (never deleting it) and restores the newest intact one
(:meth:`Checkpointer.restore_newest`).
"""
from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from jaxrlhf import parallel, runfiles
from jaxrlhf.errors import CheckpointError, DivergedError, MissingInputError

STATE_ITEM = "state"


@jax.jit
def _all_finite(tree: Any) -> jax.Array:
    leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)
              if jnp.issubdtype(x.dtype, jnp.inexact)]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.bool_(True)


def all_finite(tree: Any) -> bool:
    """Whether every floating-point value in ``tree`` is finite (one device reduction)."""
    return bool(np.asarray(jax.device_get(_all_finite(tree))))


def damage(step_dir: str, items: tuple[str, ...]) -> str | None:
    """Why the checkpoint in ``step_dir`` cannot be whole, from its files alone, or None.

    Catches what a crash or a careless copy leaves: an empty step directory, a missing item
    directory or ``_METADATA``, an empty array file. A truncated array file passes this
    check and fails when read (:meth:`Checkpointer.restore_newest` catches that).
    """
    if not os.path.isdir(step_dir) or not os.listdir(step_dir):
        return "the step directory is empty"
    for item in items:
        if not os.path.isdir(os.path.join(step_dir, item)):
            return f"its {item}/ item is missing"
    if not os.path.isfile(os.path.join(step_dir, STATE_ITEM, "_METADATA")):
        return f"{STATE_ITEM}/_METADATA is missing"
    for root, _, files in os.walk(os.path.join(step_dir, STATE_ITEM)):
        for name in files:
            if os.path.getsize(os.path.join(root, name)) == 0:
                return f"{os.path.relpath(os.path.join(root, name), step_dir)} is empty"
    return None


def _reason(error: Exception) -> str:
    lines = str(error).strip().splitlines() or [""]
    return f"it cannot be read ({type(error).__name__}: {lines[0][:160]})"


def abstract_like(tree: Any, shardings: Any | None = None) -> Any:
    """ShapeDtypeStructs of ``tree`` carrying ``shardings`` (default: the arrays' own).

    Restoring into such a target reshards onto the mesh the shardings name, so a run saved
    on one mesh shape resumes on another.
    """
    if shardings is None:
        shardings = jax.tree.map(lambda x: x.sharding, tree)
    return jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)


class Checkpointer:
    """A thin shell over ``ocp.CheckpointManager`` with one array item and JSON extras."""

    def __init__(self, directory: str, *, keep: int = 3, async_save: bool = True):
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep, create=True, enable_async_checkpointing=async_save)
        self.directory = os.path.abspath(directory)
        self._manager = ocp.CheckpointManager(self.directory, options=options)

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def last_good(self) -> str:
        """"the last good checkpoint is step N in DIR" (waits for saves in flight)."""
        self.wait()
        step = self.latest_step()
        if step is None:
            return f"no checkpoint was written before it (in {self.directory})"
        return (f"the last good checkpoint is step {step} in {self.directory} (every value "
                "in it is finite)")

    def save(self, step: int, state: Any, extras: dict[str, Any]) -> None:
        """Save ``state`` (a pytree of arrays) and JSON-serialisable ``extras`` at ``step``.

        Raises DivergedError, writing nothing, if ``state`` holds a NaN or an infinity.
        """
        if not all_finite(state):
            raise DivergedError(f"step {step}: the train state holds NaN or infinite values, "
                                f"so it was not checkpointed; {self.last_good()}")
        items = {STATE_ITEM: ocp.args.StandardSave(state)}
        items.update({name: ocp.args.JsonSave(value) for name, value in extras.items()})
        self._manager.save(step, args=ocp.args.Composite(**items))

    def clear(self) -> None:
        """Delete every checkpoint in the directory (a fresh start of a run)."""
        for step in self._manager.all_steps():
            self._manager.delete(step)

    def restore_newest(self, abstract_state: Any, extra_names: tuple[str, ...], *,
                       say: Callable[[str], None] = print) -> tuple[int, Any, dict] | None:
        """``(step, state, extras)`` of the newest intact checkpoint; None if there are none.

        Newer damaged checkpoints are moved aside into ``<directory>.damaged/`` and each is
        reported through ``say`` with what is wrong with it. If every checkpoint is
        damaged, nothing is moved and CheckpointError lists them.
        """
        damaged: list[tuple[int, str]] = []
        for step in sorted(self._manager.all_steps(), reverse=True):
            why = damage(os.path.join(self.directory, str(step)), (STATE_ITEM, *extra_names))
            restored = None
            if why is None:
                try:
                    restored = self.restore(step, abstract_state, extra_names)
                except Exception as e:  # any failure to read this step is damage to it
                    why = _reason(e)
            if parallel.all_processes(why is None):
                self._set_aside(damaged, say)
                return (step, *restored)
            damaged.append((step, why or "it cannot be read on another process"))
        if damaged:
            listed = "; ".join(f"step {s}: {why}" for s, why in damaged)
            raise CheckpointError(
                f"no intact checkpoint in {self.directory} ({listed}); nothing was moved or "
                "deleted: repair or remove them to start over, or use a new workdir")
        return None

    def _set_aside(self, damaged: list[tuple[int, str]], say: Callable[[str], None]) -> None:
        for step, why in damaged:
            moved = runfiles.set_aside(os.path.join(self.directory, str(step)),
                                       self.directory + ".damaged")
            say(f"checkpoint step {step} in {self.directory} is damaged: {why}; moved it to "
                f"{moved} and resuming from an older one")
        if damaged:
            self._manager.reload()

    def restore(self, step: int, abstract_state: Any,
                extra_names: tuple[str, ...]) -> tuple[Any, dict[str, Any]]:
        """Restore the state into ``abstract_state``'s shapes and shardings, plus extras."""
        items = {STATE_ITEM: ocp.args.StandardRestore(abstract_state)}
        items.update({name: ocp.args.JsonRestore() for name in extra_names})
        restored = self._manager.restore(step, args=ocp.args.Composite(**items))
        return restored[STATE_ITEM], {name: restored[name] for name in extra_names}

    def wait(self) -> None:
        self._manager.wait_until_finished()

    def close(self) -> None:
        self._manager.wait_until_finished()
        self._manager.close()


def latest_step(directory: str) -> int | None:
    """The newest complete checkpoint step under ``directory``, or None."""
    if not os.path.isdir(directory):
        return None
    manager = ocp.CheckpointManager(os.path.abspath(directory))
    step = manager.latest_step()
    manager.close()
    return step


def restore_subtree(directory: str, key: str, sharding: jax.sharding.Sharding,
                    step: int | None = None) -> tuple[int, Any]:
    """Restore one top-level field (e.g. ``"params"``) of a saved train state, placed with
    ``sharding``, without reading the rest (optimizer moments stay on disk).

    Returns ``(step, tree)`` where ``tree`` is nested dicts as stored (an NNX Variable is a
    ``{"value": array}`` node; see ``nnx_state_from_tree``). ``step`` None: the newest.
    """
    directory = os.path.abspath(directory)
    if not os.path.isdir(directory):
        raise MissingInputError(f"no checkpoint under {directory}; run that stage first")
    manager = ocp.CheckpointManager(directory, item_handlers={
        STATE_ITEM: ocp.PyTreeCheckpointHandler(), "data": ocp.JsonCheckpointHandler(),
        "config": ocp.JsonCheckpointHandler()})
    step = manager.latest_step() if step is None else step
    if step is None:
        raise MissingInputError(f"no checkpoint under {directory}; run that stage first")
    why = damage(os.path.join(directory, str(step)), (STATE_ITEM,))
    try:
        if why is None:
            metadata = manager.item_metadata(step)[STATE_ITEM].tree
            if key not in metadata:
                raise CheckpointError(f"checkpoint {directory} step {step} has no {key!r}; "
                                      f"it has {sorted(metadata)}")
            target = {key: jax.tree.map(
                lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=sharding),
                metadata[key])}
            restore_args = jax.tree.map(lambda _: ocp.ArrayRestoreArgs(sharding=sharding),
                                        target)
            restored = manager.restore(step, args=ocp.args.Composite(**{
                STATE_ITEM: ocp.args.PyTreeRestore(item=target, restore_args=restore_args,
                                                   partial_restore=True)}))
            return step, restored[STATE_ITEM][key]
    except CheckpointError:
        raise
    except Exception as e:  # any failure to read it is damage to it
        raise CheckpointError(f"checkpoint step {step} in {directory} is damaged: "
                              f"{_reason(e)}; re-run that stage (it resumes from its newest "
                              "intact checkpoint)") from e
    finally:
        manager.close()
    raise CheckpointError(f"checkpoint step {step} in {directory} is damaged: {why}; re-run "
                          "that stage (it resumes from its newest intact checkpoint)")


def nnx_state_from_tree(abstract_state: Any, tree: Any) -> Any:
    """Fill an abstract NNX state with arrays from a restored ``{name: {"value": x}}`` tree.

    Raises ValueError naming the first path whose presence or shape disagrees, which is what
    an incompatible checkpoint (another model size or family) looks like.
    """
    from flax import nnx

    def strip(node):  # Orbax stores list indices as strings: "0" -> 0
        if isinstance(node, dict):
            if set(node) == {"value"}:
                return node["value"]
            return {int(k) if k.isdigit() else k: strip(v) for k, v in node.items()}
        return node

    pure = strip(tree)
    expected = nnx.to_pure_dict(abstract_state)
    flat_expected = dict(jax.tree_util.tree_flatten_with_path(expected)[0])
    flat_found = dict(jax.tree_util.tree_flatten_with_path(pure)[0])
    for path, leaf in flat_expected.items():
        name = jax.tree_util.keystr(path)
        if path not in flat_found:
            raise ValueError(f"checkpoint lacks parameter {name}; it was saved from a "
                             "different model architecture")
        if tuple(flat_found[path].shape) != tuple(leaf.shape):
            raise ValueError(f"parameter {name} has shape {tuple(flat_found[path].shape)} in "
                             f"the checkpoint but the model expects {tuple(leaf.shape)}")
    nnx.replace_by_pure_dict(abstract_state, pure)
    return abstract_state
