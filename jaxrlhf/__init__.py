"""jaxrlhf: the three stages of RLHF as pure jitted steps over a sharded device mesh."""

__version__ = "0.1.0"
