"""Gao et al. (2022) functional-form fits recover known coefficients; seed aggregation
matches numpy."""
import numpy as np
import pandas as pd
import pytest
from scipy.optimize import curve_fit

from jaxrlhf.analysis import Fit, fit_overoptimization, mean_stderr

REFERENCE = {  # the closed forms, written out independently of jaxrlhf.analysis.FORMS
    "bon": lambda d, a, b: d * (a - b * d),
    "rl": lambda d, a, b: d * (a - b * np.log(d)),
}


@pytest.mark.parametrize("form,alpha,beta", [("bon", 1.3, 0.4), ("rl", 0.8, 0.35),
                                             ("bon", 0.5, -0.1)])
def test_fit_recovers_known_coefficients_exactly(form, alpha, beta):
    kl = np.linspace(0.05, 9.0, 25)
    gain = REFERENCE[form](np.sqrt(kl), alpha, beta)
    fit = fit_overoptimization(form, kl, gain)
    assert fit.alpha == pytest.approx(alpha, abs=1e-9)
    assert fit.beta == pytest.approx(beta, abs=1e-9)
    assert fit.r2 == pytest.approx(1.0, abs=1e-12)
    np.testing.assert_allclose(fit.predict(np.sqrt(kl)), gain, atol=1e-9)


@pytest.mark.parametrize("form", ["bon", "rl"])
def test_fit_recovers_coefficients_from_noisy_data_like_curve_fit(form):
    rng = np.random.default_rng(0)
    alpha, beta = 1.0, 0.3
    kl = np.concatenate([[0.0], np.log(2.0 ** np.arange(1, 12))])  # best-of-n KLs, n = 2..2048
    kl = np.concatenate([kl, np.linspace(0.1, 30.0, 40)])
    d = np.sqrt(kl)
    clean = np.where(d > 0, REFERENCE[form](np.maximum(d, 1e-300), alpha, beta), 0.0)
    gain = clean + rng.normal(0.0, 0.02, size=kl.shape)
    fit = fit_overoptimization(form, kl, gain)
    assert fit.alpha == pytest.approx(alpha, abs=0.03)
    assert fit.beta == pytest.approx(beta, abs=0.02)
    assert fit.r2 > 0.95
    # the same least-squares problem solved by scipy's iterative fitter
    keep = d > 0
    (a_ref, b_ref), _ = curve_fit(REFERENCE[form], d[keep], gain[keep], p0=(0.1, 0.1))
    assert fit.alpha == pytest.approx(a_ref, abs=1e-6)
    assert fit.beta == pytest.approx(b_ref, abs=1e-6)


@pytest.mark.parametrize("form", ["bon", "rl"])
def test_peak_is_the_argmax_of_the_fitted_curve(form):
    fit = Fit(form, alpha=1.2, beta=0.5, r2=1.0)
    d = np.linspace(1e-6, 20.0, 2_000_001)
    assert fit.peak_d == pytest.approx(d[np.argmax(fit.predict(d))], abs=1e-4)
    assert Fit(form, alpha=1.0, beta=-0.1, r2=1.0).peak_d == float("inf")


def test_r2_is_low_for_data_without_the_shape():
    rng = np.random.default_rng(1)
    kl = np.linspace(0.1, 10.0, 50)
    fit = fit_overoptimization("bon", kl, rng.normal(0.0, 1.0, size=50))
    assert fit.r2 < 0.2


def test_fit_rejects_bad_input():
    with pytest.raises(ValueError, match="form 'ppo'"):
        fit_overoptimization("ppo", [1, 2, 3], [1, 2, 3])
    with pytest.raises(ValueError, match="at least 3 points"):
        fit_overoptimization("rl", [1, 2], [1, 2])
    with pytest.raises(ValueError, match=">= 0"):
        fit_overoptimization("rl", [-1, 2, 3], [1, 2, 3])
    with pytest.raises(ValueError, match="same length"):
        fit_overoptimization("bon", [1, 2, 3], [1, 2])


def test_mean_stderr_matches_numpy():
    table = pd.DataFrame({"variant": ["a", "a", "a", "b", "b", "c"],
                          "gold": [0.1, 0.4, 0.7, 1.0, 2.0, 5.0],
                          "kl": [1.0, 2.0, 3.0, 4.0, 4.0, 0.5]})
    out = mean_stderr(table, "variant", ["gold", "kl"]).set_index("variant")
    a = np.array([0.1, 0.4, 0.7])
    assert out.loc["a", "gold"] == pytest.approx(a.mean())
    assert out.loc["a", "gold_se"] == pytest.approx(a.std(ddof=1) / np.sqrt(3))
    assert out.loc["b", "kl_se"] == 0.0 and out.loc["b", "n"] == 2
    assert out.loc["c", "gold_se"] == 0.0 and out.loc["c", "n"] == 1
    assert list(out.index) == ["a", "b", "c"]  # first-seen order
