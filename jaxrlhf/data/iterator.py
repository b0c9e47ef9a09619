"""Batches of equal-length numpy arrays: a deterministic, checkpointable training iterator
and the fixed batches of an evaluation set."""
from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from jaxrlhf.errors import DataError


class BatchIterator:
    """Endless batches; epoch ``e`` uses the permutation from ``default_rng([seed, e])``.

    The state ``{'epoch', 'position'}`` is all that is needed to resume exactly.
    """

    def __init__(self, arrays: Mapping[str, np.ndarray], batch_size: int, *, seed: int,
                 shuffle: bool = True, drop_remainder: bool = True):
        sizes = {k: len(v) for k, v in arrays.items()}
        if not sizes or len(set(sizes.values())) != 1:
            raise ValueError(f"arrays must be non-empty and of equal length, got {sizes}")
        self.arrays = dict(arrays)
        self.size = next(iter(sizes.values()))
        if batch_size <= 0 or (drop_remainder and batch_size > self.size):
            raise ValueError(f"batch_size={batch_size} does not fit {self.size} examples")
        self.batch_size, self.seed = batch_size, seed
        self.shuffle, self.drop_remainder = shuffle, drop_remainder
        self.epoch, self.position = 0, 0
        self._order = self._permutation(0)

    @property
    def num_batches_per_epoch(self) -> int:
        full, rest = divmod(self.size, self.batch_size)
        return full if self.drop_remainder or rest == 0 else full + 1

    def _permutation(self, epoch: int) -> np.ndarray:
        if not self.shuffle:
            return np.arange(self.size)
        return np.random.default_rng([self.seed, epoch]).permutation(self.size)

    def __iter__(self) -> "BatchIterator":
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        if self.position >= self.num_batches_per_epoch:
            self.epoch, self.position = self.epoch + 1, 0
            self._order = self._permutation(self.epoch)
        start = self.position * self.batch_size
        idx = self._order[start:start + self.batch_size]
        self.position += 1
        return {k: v[idx] for k, v in self.arrays.items()}

    def get_state(self) -> dict[str, int]:
        return {"epoch": int(self.epoch), "position": int(self.position)}

    def set_state(self, state: Mapping[str, int]) -> None:
        self.epoch, self.position = int(state["epoch"]), int(state["position"])
        self._order = self._permutation(self.epoch)


def fixed_batches(arrays: Mapping[str, np.ndarray], batch_size: int,
                  what: str = "the evaluation set") -> list[dict[str, np.ndarray]]:
    """Consecutive full batches in order (the remainder, fewer than one batch, is left out).

    Raises DataError when not even one batch is full: an evaluation over no rows would
    report a meaningless number.
    """
    rows = len(next(iter(arrays.values())))
    if rows < batch_size:
        raise DataError(f"{what} has {rows} usable rows, fewer than one batch of "
                        f"config.train.batch_size={batch_size}; give it more rows")
    n = rows // batch_size * batch_size
    return [{k: v[i:i + batch_size] for k, v in arrays.items()} for i in range(0, n, batch_size)]
