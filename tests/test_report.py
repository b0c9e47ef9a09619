"""The pipeline run report: figures, merged summary.json and report.md from fabricated stage dirs."""
import json
import os
import re

import matplotlib.image
import pytest

from jaxrlhf.report import FIGURES, write_report
from jaxrlhf.report.markdown import sample_pairs

FIGURE_NAMES = [name for name, _ in FIGURES]
PROMPTS = ["my show was", "that book | film was", "our trip felt"]


def _write_jsonl(path, rows):
    with open(path, "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")


def _write_json(path, obj):
    with open(path, "w") as f:
        json.dump(obj, f)


def make_run(root, *, gold_accuracy=True, calibration=True, samples=True):
    """A tiny pipeline dir with the files each trainer writes (values fabricated)."""
    sft, rm, ppo = (os.path.join(root, s) for s in ("sft", "reward", "ppo"))
    for d in (sft, rm, ppo):
        os.makedirs(d)
        _write_json(os.path.join(d, "config.json"), {"seed": 0})

    rows = [{"step": 0, "eval/loss": 4.0, "eval/perplexity": 54.6}]
    for step in range(10, 101, 10):
        rows.append({"step": step, "loss": 4.0 - step / 50, "grad_norm": 1.0, "lr": 1e-3,
                     "perf/tokens_per_sec": 1000.0})
        if step % 50 == 0:
            rows[-1].update({"eval/loss": 4.0 - step / 40, "eval/perplexity": 10.0})
    _write_jsonl(os.path.join(sft, "metrics.jsonl"), rows)
    _write_json(os.path.join(sft, "summary.json"),
                {"eval_loss": 1.5, "first_eval_loss": 4.0, "unigram_entropy": 3.25, "step": 100})
    _write_jsonl(os.path.join(sft, "samples.jsonl"),
                 [{"step": 100, "prompt": "p", "response": "r"}])

    def rm_eval(acc):
        row = {"eval/rm/accuracy": acc, "eval/rm/chosen": 1.0, "eval/rm/rejected": -1.0,
               "eval/rm/margin": 2.0, "eval/rm/loss": 0.3}
        if gold_accuracy:
            row["eval/rm/gold_accuracy"] = acc - 0.05
        return row

    rows = [{"step": 0, **rm_eval(0.5)}]
    for step in range(10, 61, 10):
        rows.append({"step": step, "rm/loss": 0.5, "rm/accuracy": 0.7, "loss": 0.5})
        if step % 30 == 0:
            rows[-1].update(rm_eval(0.5 + step / 200))
    _write_jsonl(os.path.join(rm, "metrics.jsonl"), rows)
    _write_json(os.path.join(rm, "summary.json"),
                {"eval_accuracy": 0.8, **rm_eval(0.8), "step": 60,
                 "normalization": {"gain": 0.5, "bias": 0.1}})
    if calibration:
        _write_json(os.path.join(rm, "calibration.json"),
                    [{"lo": i / 4, "hi": (i + 1) / 4, "count": c, "predicted": i / 4 + 0.1,
                      "observed": i / 4 + 0.12} for i, c in enumerate([40, 5, 5, 40])])

    rows = [{"step": 0, "eval/gold": -0.2, "eval/gold_stderr": 0.1, "eval/score": 0.0,
             "eval/kl": 0.0}]
    for step in range(1, 9):
        rows.append({"step": step, "episode": 64.0 * step, "objective/kl": 0.2 * step,
                     "objective/entropy": 10.0 - step, "objective/scores": 0.1 * step,
                     "objective/gold": 0.1 * step, "objective/rlhf_reward": 0.1,
                     "objective/non_score_reward": -0.01, "policy/approxkl": 0.01,
                     "policy/clipfrac": 0.1 / step, "loss/policy": -0.01, "loss/value": 0.1,
                     "val/clipfrac": 0.05, "val/ratio": 1.0, "lr": 1e-4})
        if step % 4 == 0:
            rows[-1].update({"eval/gold": 0.2 * step / 4, "eval/gold_stderr": 0.05,
                             "eval/score": 0.5 * step / 4, "eval/kl": 0.3 * step})
    _write_jsonl(os.path.join(ppo, "metrics.jsonl"), rows)
    _write_json(os.path.join(ppo, "summary.json"),
                {"gold_before": -0.2, "gold_before_stderr": 0.1, "gold_after": 0.4,
                 "gold_after_stderr": 0.05, "score_before": 0.0, "score_after": 1.0,
                 "kl": 2.4, "train_kl": 1.6, "iterations": 8})
    if samples:
        rows = []
        for step in (0, 4, 8):
            # The last eval lists the prompts in another order: pairing must go by prompt.
            order = PROMPTS if step == 0 else PROMPTS[::-1]
            for i, prompt in enumerate(order):
                rows.append({"step": step, "prompt": prompt,
                             "response": f"resp-{step}-{PROMPTS.index(prompt)} a|b",
                             "gold": step / 10 + PROMPTS.index(prompt) / 100,
                             "score": step / 5})
        _write_jsonl(os.path.join(ppo, "samples.jsonl"), rows)
    return str(root)


def _table_rows(md, header_start):
    lines = md.splitlines()
    start = next(i for i, l in enumerate(lines) if l.startswith(header_start))
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        cells = [c.strip().replace("\\|", "|")
                 for c in re.split(r"(?<!\\)\|", line.strip())[1:-1]]
        rows.append(cells)
    return rows


def test_report_writes_everything(tmp_path):
    run = make_run(tmp_path / "run")
    summary = write_report(run, wall_seconds=123.5, title="Tiny run")

    for name in FIGURE_NAMES:
        path = os.path.join(run, "figures", name)
        assert os.path.isfile(path), name
        with open(path, "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n", name
        assert os.path.getsize(path) > 10_000, name
        image = matplotlib.image.imread(path)
        assert image.ndim == 3 and image.shape[0] > 300 and image.shape[1] > 300, name
        assert image[..., :3].std() > 0.01, f"{name} is blank"

    with open(os.path.join(run, "summary.json")) as f:
        written = json.load(f)
    assert written == summary
    assert written["sft"]["eval_loss"] == 1.5
    assert written["sft"]["unigram_entropy"] == 3.25
    assert written["reward"]["eval_accuracy"] == 0.8
    assert written["reward"]["normalization"] == {"gain": 0.5, "bias": 0.1}
    assert written["ppo"]["gold_before"] == -0.2
    assert written["ppo"]["gold_after"] == 0.4
    assert written["ppo"]["gold_after_stderr"] == 0.05
    assert written["ppo"]["kl"] == 2.4
    assert written["ppo"]["iterations"] == 8
    assert written["wall_seconds"] == 123.5
    assert sorted(written["figures"]) == sorted(FIGURE_NAMES)

    with open(os.path.join(run, "report.md")) as f:
        md = f.read()
    assert md.startswith("# Tiny run\n")
    for name in FIGURE_NAMES:
        assert f"](figures/{name})" in md
    assert "0.400 ± 0.050" in md and "-0.200 ± 0.100" in md and "2.400" in md
    assert "2m 04s" in md
    assert ["Reward", "held-out agreement with gold", "0.750"] in _table_rows(md, "| stage |")


def test_sample_table_pairs_before_and_after_by_prompt(tmp_path):
    run = make_run(tmp_path / "run")
    write_report(run, wall_seconds=1.0)
    with open(os.path.join(run, "report.md")) as f:
        md = f.read()
    rows = _table_rows(md, "| prompt |")
    assert [r[0] for r in rows] == PROMPTS  # first-eval order, one row per prompt
    for row in rows:
        assert len(row) == 7  # escaped pipes did not split cells
        i = PROMPTS.index(row[0])
        assert row[1] == f"resp-0-{i} a|b"
        assert row[2] == f"{i / 100:.3f}"
        assert row[4] == f"resp-8-{i} a|b"  # last eval step, not the middle one
        assert row[5] == f"{0.8 + i / 100:.3f}"
        assert row[6] == f"{8 / 5:.3f}"
    assert "step 0" in md and "step 8" in md


def test_sample_pairs_handles_prompts_missing_at_one_end():
    samples = [{"step": 0, "prompt": "a", "response": "a0"},
               {"step": 0, "prompt": "b", "response": "b0"},
               {"step": 5, "prompt": "b", "response": "b5"},
               {"step": 5, "prompt": "c", "response": "c5"}]
    first, last, pairs = sample_pairs(samples)
    assert (first, last) == (0, 5)
    got = [(p["prompt"], p["before"] and p["before"]["response"],
            p["after"] and p["after"]["response"]) for p in pairs]
    assert got == [("a", "a0", None), ("b", "b0", "b5"), ("c", None, "c5")]


def test_optional_files_missing_degrade_gracefully(tmp_path):
    run = make_run(tmp_path / "run", gold_accuracy=False, calibration=False, samples=False)
    summary = write_report(run, wall_seconds=5.0)
    figures = os.path.join(run, "figures")
    assert not os.path.exists(os.path.join(figures, "reward_calibration.png"))
    for name in FIGURE_NAMES:
        if name != "reward_calibration.png":
            assert os.path.getsize(os.path.join(figures, name)) > 10_000
    assert "reward_calibration.png" not in summary["figures"]
    with open(os.path.join(run, "report.md")) as f:
        md = f.read()
    assert "calibration.json" in md and "samples.jsonl" in md
    assert "agreement with gold" not in md


@pytest.mark.parametrize("missing", ["reward", "ppo/summary.json"])
def test_missing_stage_is_a_clear_error(tmp_path, missing):
    run = make_run(tmp_path / "run")
    path = os.path.join(run, missing)
    if os.path.isdir(path):
        import shutil
        shutil.rmtree(path)
    else:
        os.remove(path)
    with pytest.raises(FileNotFoundError, match=re.escape(path)):
        write_report(run, wall_seconds=1.0)
    assert not os.path.exists(os.path.join(run, "report.md"))
