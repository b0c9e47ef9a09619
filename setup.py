"""jaxrlhf: SFT, Bradley-Terry reward modelling and PPO in JAX/Flax NNX."""
from setuptools import find_packages, setup

# The optional experiment trackers (jaxrlhf.trackers); the tests exercise both, offline.
TRACKERS = {"wandb": ["wandb>=0.19"], "mlflow": ["mlflow-skinny>=2.16"]}

setup(
    name="jaxrlhf",
    version="0.1.0",
    description="RLHF (SFT, reward modelling, PPO) as pure jitted steps over a sharded mesh.",
    packages=find_packages(include=["jaxrlhf", "jaxrlhf.*"]),
    python_requires=">=3.11",
    install_requires=[
        "jax>=0.7",
        "flax>=0.12",
        "optax>=0.2.5",
        "orbax-checkpoint>=0.11",
        "transformers>=4.50",
        "tokenizers>=0.21",
        "safetensors>=0.4",
        "datasets>=3.0",
        "ml_collections>=1.0",
        "absl-py>=2.0",
        "numpy>=1.26",
        "scipy>=1.11",
        "scikit-learn>=1.4",
        "tqdm>=4.66",
        "tensorboardX>=2.6",
        "matplotlib>=3.8",
        "pandas>=2.0",
        "jinja2>=3.1",
    ],
    entry_points={"console_scripts": ["jaxrlhf=jaxrlhf.cli:run"]},
    extras_require={
        **TRACKERS,
        "test": ["pytest>=8", "pytest-xdist>=3.5", "hypothesis>=6.100", "torch==2.13.0",
                 "nbclient>=0.10", "nbformat>=5.10", "ipykernel>=6.29",
                 *TRACKERS["wandb"], *TRACKERS["mlflow"]],
    },
)
