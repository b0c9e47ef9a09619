"""Mesh resolution and logical-name -> mesh-axis mapping."""
import jax
import pytest
from jax.sharding import PartitionSpec as P

from jaxrlhf import parallel


def test_minus_one_takes_the_remaining_devices():
    assert parallel.mesh_shape({"data": -1, "fsdp": 2, "tensor": 2}, 8) == {
        "data": 2, "fsdp": 2, "tensor": 2}
    assert parallel.mesh_shape({"data": 1, "fsdp": -1, "tensor": 1}, 8)["fsdp"] == 8


@pytest.mark.parametrize("axes, match", [
    ({"data": -1, "fsdp": -1}, "only one axis may be -1"),
    ({"data": 3, "fsdp": -1}, "does not divide"),
    ({"data": 2, "fsdp": 2, "tensor": 1}, "uses 4 devices but 8"),
    ({"dat": 8}, "unknown axes"),
])
def test_bad_meshes_are_rejected(axes, match):
    with pytest.raises(ValueError, match=match):
        parallel.mesh_shape(axes, 8)


def test_logical_names_map_through_the_rule_table():
    mesh = parallel.make_mesh({"data": 1, "fsdp": 4, "tensor": 2})
    rules = parallel.rules_table([("embed", "fsdp"), ("mlp", "tensor"), ("vocab", "tensor"),
                                  ("layers", None)])
    assert parallel.logical_to_mesh_spec(("embed", "mlp"), (64, 256), mesh, rules) == P(
        "fsdp", "tensor")
    # a dimension the mesh axis does not divide stays replicated
    assert parallel.logical_to_mesh_spec(("vocab", "embed"), (33, 64), mesh, rules) == P(
        None, "fsdp")
    # a mesh axis is used once per array
    assert parallel.logical_to_mesh_spec(("mlp", "vocab"), (8, 8), mesh, rules) == P(
        "tensor", None)
    assert parallel.logical_to_mesh_spec(("layers", "embed"), (2, 64), mesh, rules) == P(
        None, "fsdp")


def test_unknown_mesh_axis_in_rules():
    with pytest.raises(ValueError, match="unknown mesh axis 'model'"):
        parallel.rules_table([("embed", "model")])


def test_batches_shard_over_data_and_fsdp():
    import numpy as np
    mesh = parallel.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    batch = parallel.shard_batch({"x": np.arange(16).reshape(8, 2)}, mesh)
    assert batch["x"].sharding.spec == P(("data", "fsdp"))
    np.testing.assert_array_equal(np.asarray(batch["x"]), np.arange(16).reshape(8, 2))
    assert jax.device_count() == 8
