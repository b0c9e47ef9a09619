"""Orbax checkpoints of the whole run state, restorable onto any mesh.

A checkpoint holds the train-state pytree (params, optimizer state, step, RNG and, for PPO,
the KL-controller state) plus JSON items: the data-iterator position and the config.
Saves are asynchronous; the last ``keep`` are kept (docs/design.md, rule 5).
"""
from __future__ import annotations

import os
from typing import Any

import jax
import orbax.checkpoint as ocp


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

    def save(self, step: int, state: Any, extras: dict[str, Any]) -> None:
        """Save ``state`` (a pytree of arrays) and JSON-serialisable ``extras`` at ``step``."""
        items = {"state": ocp.args.StandardSave(state)}
        items.update({name: ocp.args.JsonSave(value) for name, value in extras.items()})
        self._manager.save(step, args=ocp.args.Composite(**items))

    def restore(self, step: int, abstract_state: Any,
                extra_names: tuple[str, ...]) -> tuple[Any, dict[str, Any]]:
        """Restore the state into ``abstract_state``'s shapes and shardings, plus extras."""
        items = {"state": ocp.args.StandardRestore(abstract_state)}
        items.update({name: ocp.args.JsonRestore() for name in extra_names})
        restored = self._manager.restore(step, args=ocp.args.Composite(**items))
        return restored["state"], {name: restored[name] for name in extra_names}

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
    manager = ocp.CheckpointManager(directory, item_handlers={
        "state": ocp.PyTreeCheckpointHandler(), "data": ocp.JsonCheckpointHandler(),
        "config": ocp.JsonCheckpointHandler()})
    step = manager.latest_step() if step is None else step
    if step is None:
        raise FileNotFoundError(f"no checkpoint under {directory}; run that stage first")
    metadata = manager.item_metadata(step)["state"].tree
    if key not in metadata:
        raise KeyError(f"checkpoint {directory} step {step} has no {key!r}; it has "
                       f"{sorted(metadata)}")
    target = {key: jax.tree.map(
        lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=sharding), metadata[key])}
    restore_args = jax.tree.map(lambda _: ocp.ArrayRestoreArgs(sharding=sharding), target)
    restored = manager.restore(step, args=ocp.args.Composite(state=ocp.args.PyTreeRestore(
        item=target, restore_args=restore_args, partial_restore=True)))
    manager.close()
    return step, restored["state"][key]


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
