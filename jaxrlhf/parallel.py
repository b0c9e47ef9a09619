"""Device mesh, logical-axis sharding rules and multi-host initialisation.

One code path for 1 CPU, 8 emulated CPU devices, a GPU or a TPU pod (docs/design.md, rule 4):
parallelism is the mesh shape and the rule table in the config, never a code fork.
Parameters carry logical axis names (``embed``, ``mlp``, ``heads``, ``kv``, ``vocab``,
``layers``); the rule table maps each to a mesh axis. Batches are sharded over
``('data', 'fsdp')``.
"""
from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

MESH_AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")
# Logical name of the leading (batch) axis of every batch array.
BATCH = "batch"


def initialize_distributed() -> None:
    """Start ``jax.distributed`` when the environment describes several processes.

    Reads ``JAX_COORDINATOR_ADDRESS``, ``JAX_NUM_PROCESSES`` and ``JAX_PROCESS_ID`` (or the
    cluster auto-detection of TPU pods / SLURM when only the coordinator is set). A no-op on
    one process.
    """
    num = int(os.environ.get("JAX_NUM_PROCESSES", "1"))
    coordinator = os.environ.get("JAX_COORDINATOR_ADDRESS")
    if num <= 1 and not coordinator:
        return
    if jax.distributed.is_initialized():
        return
    kwargs: dict[str, Any] = {}
    if num > 1:
        kwargs = {"num_processes": num, "process_id": int(os.environ["JAX_PROCESS_ID"])}
    jax.distributed.initialize(coordinator, **kwargs)


def all_processes(flag: bool) -> bool:
    """Whether ``flag`` holds on every process (no communication on one process)."""
    if jax.process_count() == 1:
        return bool(flag)
    from jax.experimental import multihost_utils
    return bool(np.all(multihost_utils.process_allgather(np.asarray(bool(flag)))))


def mesh_shape(axes: Mapping[str, int], num_devices: int) -> dict[str, int]:
    """Resolve a ``{data, fsdp, tensor}`` spec where one axis may be -1 ("the rest").

    Raises ValueError naming the ``mesh.<axis>`` field when the sizes do not tile the devices.
    """
    unknown = set(axes) - set(MESH_AXES)
    if unknown:
        raise ValueError(f"mesh: unknown axes {sorted(unknown)}; the axes are {MESH_AXES}")
    sizes = {name: int(axes.get(name, 1)) for name in MESH_AXES}
    free = [name for name, size in sizes.items() if size == -1]
    if len(free) > 1:
        raise ValueError(f"mesh: only one axis may be -1, got {free}")
    for name, size in sizes.items():
        if size == 0 or size < -1:
            raise ValueError(f"mesh.{name}={size} must be a positive size or -1 (the rest)")
    fixed = math.prod(size for size in sizes.values() if size != -1)
    if free:
        if num_devices % fixed:
            raise ValueError(
                f"mesh: the fixed axes multiply to {fixed}, which does not divide the "
                f"{num_devices} devices; change the mesh.* sizes")
        sizes[free[0]] = num_devices // fixed
    elif fixed != num_devices:
        raise ValueError(
            f"mesh: {sizes} uses {fixed} devices but {num_devices} are present; "
            "set one axis to -1 to take the rest")
    return sizes


def make_mesh(axes: Mapping[str, int], devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A ``(data, fsdp, tensor)`` mesh with Auto axis types (ordinary GSPMD sharding)."""
    devices = list(devices if devices is not None else jax.devices())
    sizes = mesh_shape(axes, len(devices))
    shape = tuple(sizes[name] for name in MESH_AXES)
    return jax.make_mesh(shape, MESH_AXES, axis_types=(jax.sharding.AxisType.Auto,) * 3,
                         devices=devices)


def data_parallel_size(axes: Mapping[str, int], num_devices: int) -> int:
    """Number of ways a batch is split: the product of the ``data`` and ``fsdp`` axes."""
    sizes = mesh_shape(axes, num_devices)
    return sizes["data"] * sizes["fsdp"]


def rules_table(rules: Sequence[Sequence[Any]]) -> dict[str, tuple[str, ...]]:
    """Normalise a config rule table ``((logical, mesh_axis | (axes..) | None), ...)``."""
    table = {}
    for logical, target in rules:
        if target is None:
            table[logical] = ()
        elif isinstance(target, str):
            table[logical] = (target,)
        else:
            table[logical] = tuple(target)
        for axis in table[logical]:
            if axis not in MESH_AXES:
                raise ValueError(
                    f"axis_rules: logical axis {logical!r} maps to unknown mesh axis {axis!r};"
                    f" the mesh axes are {MESH_AXES}")
    return table


def logical_to_mesh_spec(names: Sequence[str | None], shape: Sequence[int], mesh: Mesh,
                         rules: Mapping[str, tuple[str, ...]]) -> P:
    """Map one array's logical axis names to a mesh PartitionSpec.

    A mesh axis is used at most once per array, and a dimension that the mesh axes do not
    divide stays replicated (tiny vocabularies or head counts on a wide mesh).
    """
    used: set[str] = set()
    spec = []
    for name, dim in zip(names, shape):
        axes = tuple(a for a in rules.get(name, ()) if a not in used and mesh.shape[a] > 1)
        if axes and dim % math.prod(mesh.shape[a] for a in axes) == 0:
            used.update(axes)
            spec.append(axes[0] if len(axes) == 1 else axes)
        else:
            spec.append(None)
    return P(*spec)


def _logical_names(leaf_or_variable: Any, ndim: int) -> tuple[str | None, ...]:
    names = None
    if isinstance(leaf_or_variable, nnx.Variable):
        names = leaf_or_variable.get_metadata().get("out_sharding")
    return tuple(names) if names else (None,) * ndim


def state_shardings(abstract_state: Any, mesh: Mesh, rules: Mapping[str, tuple[str, ...]]):
    """NamedShardings for an (abstract) NNX state whose Variables carry logical names.

    The result has the state's own tree structure (Variables holding shardings), so it can be
    passed as ``out_shardings`` or zipped with the state by ``jax.tree.map``.
    """
    def one(variable):
        if not isinstance(variable, nnx.Variable):
            return NamedSharding(mesh, P())
        value = variable.get_value()
        names = _logical_names(variable, len(value.shape))
        spec = logical_to_mesh_spec(names, value.shape, mesh, rules)
        return variable.replace(NamedSharding(mesh, spec))

    return jax.tree.map(one, abstract_state, is_leaf=lambda x: isinstance(x, nnx.Variable))


def place(state: Any, mesh: Mesh, rules: Mapping[str, tuple[str, ...]]) -> Any:
    """``state`` (an NNX state whose Variables carry logical names) on ``mesh``, each
    parameter sharded by the rules."""
    return put(state, state_shardings(state, mesh, rules))


def constrain_batch(x: jax.Array) -> jax.Array:
    """``x`` [batch, ...] kept split over the batch axes when a mesh is in context
    (``jax.set_mesh``, as the stage shells trace their steps); unchanged otherwise. Without it
    XLA may follow FSDP-sharded weights and split the hidden axis of the residual stream
    instead, which leaves the wider activations (the MLP's) whole on every device."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or not set(BATCH_AXES) <= set(mesh.axis_names):
        return x
    return jax.lax.with_sharding_constraint(x, P(BATCH_AXES))


class MeshJit:
    """``jax.jit(fn, **kwargs)`` traced, lowered and run with ``mesh`` in context
    (``jax.set_mesh``), so that :func:`constrain_batch` applies inside. Model construction
    stays outside the context: parameters are placed by logical names, not by the mesh.
    ``trailing`` are arguments appended to every call (placed once, e.g. LoRA's frozen base:
    they enter the program as arguments, never as constants)."""

    def __init__(self, mesh: Mesh, fn: Any, *, trailing: tuple[Any, ...] = (),
                 **jit_kwargs: Any):
        self.mesh = mesh
        self.trailing = trailing
        self.jitted = jax.jit(fn, **jit_kwargs)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        with jax.set_mesh(self.mesh):
            return self.jitted(*args, *self.trailing, **kwargs)

    def lower(self, *args: Any, **kwargs: Any) -> Any:
        with jax.set_mesh(self.mesh):
            return self.jitted.lower(*args, *self.trailing, **kwargs)


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) axis over ``('data', 'fsdp')``, the rest replicated; any rank >= 1."""
    return NamedSharding(mesh, P(BATCH_AXES))


def fetch(tree: Any) -> Any:
    """Host copies of a tree of arrays, each whole on every process, however it is sharded
    (``jax.device_get`` cannot read another process's shards)."""
    if jax.process_count() == 1:
        return jax.device_get(tree)
    from jax.experimental import multihost_utils
    return multihost_utils.process_allgather(tree, tiled=True)


def put(tree: Any, shardings: Any) -> Any:
    """Place a tree whose every process holds the whole value (host or one local device)
    onto ``shardings``; unlike ``jax.device_put`` this works across processes, where no
    device holds a shard of another process's devices. An abstract tree
    (``jax.ShapeDtypeStruct`` leaves, as a dry run builds) gets the shardings attached."""
    def one(x, sharding):
        if isinstance(x, jax.ShapeDtypeStruct):
            return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding)
        host = np.asarray(jax.device_get(x))
        return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])
    return jax.tree.map(one, tree, shardings)


def shard_batch(batch: Mapping[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """Place a host batch (the global batch on every process) onto the mesh."""
    out = {}
    for key, value in batch.items():
        sharding = batch_sharding(mesh)
        out[key] = jax.make_array_from_callback(
            np.shape(value), sharding, lambda index, v=value: np.asarray(v[index]))
    return out
