"""Every test sees 8 emulated CPU devices, so sharded and single-device runs can be compared."""
import os

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                           + " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("JAXRLHF_NO_PROGRESS", "1")
