"""Device memory of a compiled program, from XLA's own memory analysis, without running it.

``compiled.memory_analysis()`` gives, per device, the bytes of the program's arguments, its
outputs, the outputs that alias donated arguments, its temporaries (XLA's simulated peak of
the buffers it allocates while running) and its code. Their sum, less the aliased bytes, is
the peak the program needs on each device. The numbers are those of the backend that
compiled it: a CPU compile of an accelerator config is a close proxy, not the GPU's figure
(the GPU compiler fuses and schedules differently).
"""
from __future__ import annotations

from typing import Any


def compiled_memory(compiled: Any) -> dict[str, int]:
    """Per-device bytes of a ``jax.stages.Compiled``: arguments, outputs, aliased (donated),
    temporaries, code, and their peak ``arguments + outputs - aliased + temporaries + code``."""
    m = compiled.memory_analysis()
    out = {"argument_bytes": m.argument_size_in_bytes, "output_bytes": m.output_size_in_bytes,
           "alias_bytes": m.alias_size_in_bytes, "temp_bytes": m.temp_size_in_bytes,
           "code_bytes": m.generated_code_size_in_bytes}
    out["peak_bytes"] = (out["argument_bytes"] + out["output_bytes"] - out["alias_bytes"]
                         + out["temp_bytes"] + out["code_bytes"])
    return out
