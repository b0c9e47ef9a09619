"""The best-of-n overoptimisation experiment (Gao et al. 2022, Fig. 1a): its committed
verdict follows from its series, its runner runs end to end at smoke size, and its
criterion passes and fails where it should on synthetic series."""
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import REPO, assert_same_numbers
from experiments import common
from experiments.bon_overoptimization import run as experiment
from notebooks.run import kernel_environment


def test_committed_verdict_follows_from_its_series():
    result = common.load(experiment.NAME)
    verdict = experiment.criterion(result["series"])
    assert verdict["passed"] == result["passed"]
    assert_same_numbers(json.loads(json.dumps(verdict["measured"], default=float)),
                        result["measured"])
    assert result["criterion"] == experiment.CRITERION and result["claim"] == experiment.CLAIM
    folder = os.path.join(REPO, "experiments", experiment.NAME)
    assert os.path.exists(os.path.join(folder, common.FIGURE_FILE))
    with open(os.path.join(folder, "README.md")) as f:
        readme = f.read()
    assert experiment.CRITERION in " ".join(readme.split()), "the README states the criterion"
    assert ("**PASS**" if result["passed"] else "**FAIL**") in readme


def test_runner_at_smoke_size(smoke_root, tmp_path):
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "-m", f"experiments.{experiment.NAME}.run",
         f"--config=configs/experiments/{experiment.NAME}.py:smoke",
         f"--workdir={smoke_root / 'runs'}", f"--out={out}"],
        cwd=REPO, env=kernel_environment(True), capture_output=True, text=True,
        timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    with open(out / common.RESULTS_FILE) as f:
        result = json.load(f)
    assert result["passed"] == experiment.criterion(result["series"])["passed"]
    proxy = result["series"]["proxies"][0]
    assert proxy["n"] == [1, 2, 4, 8]
    assert proxy["kl"] == pytest.approx([math.log(n) - (n - 1) / n for n in proxy["n"]])
    assert (out / common.FIGURE_FILE).stat().st_size > 10_000


def _series(betas, alpha=1.0, proxy=lambda d: d):
    n = [2 ** k for k in range(10)]
    kl = np.array([math.log(m) - (m - 1) / m for m in n])
    d = np.sqrt(kl)
    return {"pool": 512, "prompts": 8, "proxies": [
        {"pairs": pairs, "rm_accuracy": 0.8, "rm_gold_accuracy": 0.8, "n": n,
         "kl": kl.tolist(), "proxy": proxy(d).tolist(),
         "gold": (0.1 + d * (alpha - beta * d)).tolist()}
        for pairs, beta in zip((64, 256, 1024), betas)]}


def test_criterion_on_synthetic_series():
    result = experiment.criterion(_series(betas=(0.8, 0.5, 0.2)))
    assert result["passed"], result["measured"]["checks"]
    small = result["measured"]["proxies"][0]
    assert small["fit"]["beta"] == pytest.approx(0.8) and small["fit"]["r2"] == pytest.approx(1)
    assert small["n_at_peak"] < 512 and small["fall_fraction_of_gain"] >= 0.2
    checks = experiment.criterion(_series(betas=(0.5, 0.8, 0.2)))["measured"]["checks"]
    assert not checks["beta_falls_with_data"]
    checks = experiment.criterion(_series(betas=(0.1, 0.05, 0.01)))["measured"]["checks"]
    assert not checks["smallest_proxy_gold_peaks_and_falls"]        # gold never falls
    flat = experiment.criterion(_series((0.8, 0.5, 0.2), proxy=lambda d: np.minimum(d, 1.0)))
    assert not flat["measured"]["checks"]["proxy_rises_for_every_proxy"]
