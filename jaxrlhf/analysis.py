"""Analysis for experiments and notebooks: the overoptimisation functional forms of Gao,
Schulman & Hilton (2022) and mean ± standard error over seeds.

Gao et al. (2022, "Scaling Laws for Reward Model Overoptimization", eq. 1 and 2) write the
gold reward gained over the initial policy as a function of ``d = sqrt(KL(pi || pi_init))``:

* best-of-n:  ``R_bon(d) = d (alpha - beta d)``
* RL:         ``R_RL(d)  = d (alpha - beta log d)``

Both are linear in ``(alpha, beta)``, so the fit is ordinary least squares through the
origin (``R(0) = 0``: the reward is the gain over the initial policy), exact and free of
starting points.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd


def _d_log_d(d: np.ndarray) -> np.ndarray:
    """``d log d`` with its limit 0 at ``d = 0``."""
    return np.where(d > 0, d * np.log(np.where(d > 0, d, 1.0)), 0.0)


# form -> (the regressor alpha multiplies, the regressor -beta multiplies), both of d.
FORMS: dict[str, tuple[Callable[[np.ndarray], np.ndarray], Callable[[np.ndarray], np.ndarray]]] = {
    "bon": (lambda d: d, lambda d: d * d),    # d (alpha - beta d)
    "rl": (lambda d: d, _d_log_d),            # d (alpha - beta log d)
}


@dataclasses.dataclass(frozen=True)
class Fit:
    """A fitted functional form ``R(d)`` (Gao et al. 2022, eq. 1 for ``bon``, eq. 2 for
    ``rl``) with its coefficient of determination on the fitted points."""
    form: str
    alpha: float
    beta: float
    r2: float

    def predict(self, d: np.ndarray | Sequence[float]) -> np.ndarray:
        """``R(d)``: the predicted gold gain at ``d = sqrt(KL)``."""
        d = np.asarray(d, np.float64)
        linear, curve = FORMS[self.form]
        return self.alpha * linear(d) - self.beta * curve(d)

    @property
    def peak_d(self) -> float:
        """The ``d`` where ``R`` is largest (``inf`` when ``beta <= 0``: no peak):
        ``alpha / (2 beta)`` for best-of-n, ``exp(alpha / beta - 1)`` for RL."""
        if self.beta <= 0:
            return float("inf")
        if self.form == "bon":
            return self.alpha / (2 * self.beta)
        return float(np.exp(self.alpha / self.beta - 1.0))


def fit_overoptimization(form: str, kl: np.ndarray | Sequence[float],
                         gain: np.ndarray | Sequence[float]) -> Fit:
    """Least-squares ``(alpha, beta)`` of ``gain ≈ R(sqrt(kl))`` for ``form`` ``"bon"`` or
    ``"rl"`` (Gao et al. 2022, eq. 1 / 2).

    ``kl``: KL(policy || initial policy) in nats, >= 0; ``gain``: the gold reward minus the
    initial policy's (so ``R(0) = 0``). ``r2`` is ``1 - SS_res / SS_tot`` of the fitted
    points, ``SS_tot`` about their mean.
    """
    if form not in FORMS:
        raise ValueError(f"form {form!r} is not one of {tuple(FORMS)}")
    kl = np.asarray(kl, np.float64)
    gain = np.asarray(gain, np.float64)
    if kl.shape != gain.shape or kl.ndim != 1:
        raise ValueError(f"kl {kl.shape} and gain {gain.shape} must be 1-D of the same length")
    if len(kl) < 3:
        raise ValueError(f"fitting two coefficients needs at least 3 points, got {len(kl)}")
    if np.any(kl < 0) or not np.all(np.isfinite(kl)) or not np.all(np.isfinite(gain)):
        raise ValueError("kl must be finite and >= 0 and gain finite")
    d = np.sqrt(kl)
    linear, curve = FORMS[form]
    design = np.stack([linear(d), -curve(d)], axis=1)                      # [points, 2]
    (alpha, beta), *_ = np.linalg.lstsq(design, gain, rcond=None)
    residual = gain - design @ np.array([alpha, beta])
    total = np.sum((gain - gain.mean()) ** 2)
    r2 = 1.0 - float(np.sum(residual ** 2)) / float(total) if total > 0 else float("nan")
    return Fit(form, float(alpha), float(beta), r2)


def mean_stderr(table: pd.DataFrame, by: str | Sequence[str],
                columns: Sequence[str]) -> pd.DataFrame:
    """Per group of ``by``: ``<column>`` (the mean over rows, e.g. seeds), ``<column>_se``
    (its standard error, ``std(ddof=1) / sqrt(n)``; 0 for one row) and ``n``."""
    groups = table.groupby(by, sort=False)
    out = groups[list(columns)].mean()
    n = groups.size()
    for column in columns:
        std = groups[column].std(ddof=1).fillna(0.0)
        out[f"{column}_se"] = std / np.sqrt(n)
    out["n"] = n
    return out.reset_index()
