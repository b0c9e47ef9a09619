"""jaxrlhf: the three stages of RLHF as pure jitted steps over a sharded device mesh.

The notebook API — ``jaxrlhf.load_config``, ``jaxrlhf.run``, ``jaxrlhf.run_once``,
``jaxrlhf.sweep``, ``jaxrlhf.load_result`` — lives in :mod:`jaxrlhf.api` and is imported
on first use, so importing a submodule (``jaxrlhf.models``) does not load the trainers.
"""

__version__ = "0.1.0"
_API = ("load_config", "run", "sweep", "load_result", "Result", "run_once")


def __getattr__(name: str):
    if name in _API:
        from jaxrlhf import api
        return getattr(api, name)
    raise AttributeError(f"module 'jaxrlhf' has no attribute {name!r}")
