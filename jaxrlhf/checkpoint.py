"""Orbax checkpoints of the whole run state, restorable onto any mesh.

A checkpoint holds the train-state pytree (params, optimizer state, step, RNG and, for PPO,
the KL-controller state) plus JSON items: the data-iterator position and the config.
Saves are asynchronous; the last ``keep`` are kept (DESIGN.md rule 5).
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
