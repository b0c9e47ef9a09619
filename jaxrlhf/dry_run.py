"""``--dry_run``: compile a stage's training step for a config and report the peak memory it
needs per device (``jaxrlhf.memory``), without data, weights or a single step run — so a
user sees whether a config fits before renting the hardware.

``python -m jaxrlhf sft --config=configs/presets/llama3_8b.py --dry_run``

The programs are the stage's own (``Stage.dry_run``: built by its ``build`` from abstract
parameters, shapes only) lowered with abstract batches of the config's shapes; the numbers are those of the backend
it compiles for (see ``jaxrlhf.memory`` for what they mean on CPU).
"""
from __future__ import annotations

from typing import Any

import jax
import ml_collections

from jaxrlhf import memory, parallel, stages as stages_lib
from jaxrlhf.settings import RunSettings

GIB = 2 ** 30


def report(stage: str, config: ml_collections.ConfigDict) -> dict[str, Any]:
    """{stage: {program: per-device memory}} for ``stage`` (or each stage of a pipeline
    config), compiled for the current devices without running anything."""
    if stage == stages_lib.PIPELINE:
        return {name: report(command, config[name])[command]
                for name, command in stages_lib.pipeline_stages(config)}
    settings = RunSettings.from_config(config)
    stages_lib.get(stage).check(settings, jax.device_count())
    mesh = parallel.make_mesh(settings.mesh)
    out: dict[str, Any] = {}
    for name, (jitted, args, params) in stages_lib.get(stage).dry_run(settings, mesh).items():
        used = memory.compiled_memory(jitted.lower(*args).compile())
        out[name] = {**used, "peak_gib": used["peak_bytes"] / GIB,
                     "parameters": sum(x.size for x in jax.tree.leaves(params))}
    return {stage: {"devices": jax.device_count(), "device_kind": jax.devices()[0].device_kind,
                    "mesh": dict(mesh.shape), "programs": out}}


def _size(n: float) -> str:
    return f"{n / GIB:.2f} GiB" if n >= GIB / 10 else f"{n / 2 ** 20:.1f} MiB"


def summary_lines(result: dict[str, Any]) -> list[str]:
    """One readable line per compiled program."""
    lines = []
    for stage, info in result.items():
        for name, m in info["programs"].items():
            lines.append(
                f"{stage} {name}: peak {_size(m['peak_bytes'])} per device on {info['devices']} "
                f"x {info['device_kind']} (mesh {info['mesh']}; arguments "
                f"{_size(m['argument_bytes'])}, temporaries {_size(m['temp_bytes'])}, outputs "
                f"{_size(m['output_bytes'])}, donated {_size(m['alias_bytes'])}; "
                f"{m['parameters'] / 1e6:,.1f}M trained parameters)")
    return lines
