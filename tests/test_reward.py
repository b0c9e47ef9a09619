"""Reward modelling: HH splitting on real rows, truncation policy, gold-label learning,
normalisation, and sharded / single-device agreement."""
import gzip
import json

import jax
import numpy as np
import pytest

from configs.reward import quickstart
from conftest import FIXTURES, full_dataset, read_summary, run_cli
from jaxrlhf import parallel, workdir as workdir_lib
from jaxrlhf.data import paths, preference, sft as sft_data
from jaxrlhf.models.build import resolve_config
from jaxrlhf.settings import RunSettings
from jaxrlhf.tasks import get_task
from jaxrlhf.trainers import reward

HH = "hh-rlhf/harmless-base-test.jsonl.gz"
HH_SAMPLE = f"{FIXTURES}/hh_harmless_base_sample.jsonl.gz"  # 40 real rows, 5 diverging


def _hh_rows(path):
    with gzip.open(path, "rt") as f:
        return [json.loads(line) for line in f]


def _split_counts(rows):
    """Check every row's split; return (multi-turn prompts, dialogues diverging early)."""
    multi_turn = diverging = 0
    for row in rows:
        prompt, chosen, rejected = preference.split_hh_dialogue(row["chosen"], row["rejected"])
        # the prompt ends at an Assistant marker, and re-joining gives the dialogues back
        assert prompt.endswith("\n\nAssistant:")
        assert prompt + chosen == row["chosen"] and prompt + rejected == row["rejected"]
        if "\n\nAssistant:" in chosen + rejected:
            diverging += 1  # dialogues that part before their last turn
        else:  # the usual case: the prompt is everything up to the last Assistant turn
            assert row["chosen"].rfind("\n\nAssistant:") + len("\n\nAssistant:") == len(prompt)
        multi_turn += prompt.count("\n\nHuman:") > 1
    return multi_turn, diverging


def test_hh_split_on_real_rows_including_multi_turn():
    multi_turn, diverging = _split_counts(_hh_rows(HH_SAMPLE))
    assert multi_turn >= 20 and diverging == 5  # the fixture's make-up (its README)


@full_dataset(HH)
def test_hh_split_on_the_whole_file():
    multi_turn, diverging = _split_counts(_hh_rows(paths.resolve(HH)))
    assert multi_turn > 500  # HH harmless-base has many multi-turn dialogues
    assert diverging < 10


def test_hh_multi_turn_example_by_hand():
    chosen = "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: how?\n\nAssistant: fine"
    rejected = "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: how?\n\nAssistant: go away"
    prompt, c, r = preference.split_hh_dialogue(chosen, rejected)
    assert prompt == "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: how?\n\nAssistant:"
    assert (c, r) == (" fine", " go away")


def test_malformed_preference_row_names_its_origin():
    with pytest.raises(ValueError, match="data.jsonl:7"):
        preference.pair_from_row({"chosen": "a"}, "data.jsonl:7")
    with pytest.raises(ValueError, match="x.jsonl:3: HH dialogues share no"):
        preference.pair_from_row({"chosen": "a", "rejected": "b"}, "x.jsonl:3")


def test_truncation_policy_counts_and_drops_identical_pairs():
    tok = get_task("sentiment").tokenizer
    pairs = [preference.PreferencePair("movie was", " good .", " bad ."),
             preference.PreferencePair("movie was", " good .", " good ."),
             preference.PreferencePair("the movie was", " good good good good .", " bad .")]
    arrays, stats = preference.tokenize_pairs(pairs, tok, max_prompt_tokens=2,
                                              max_response_tokens=3)
    assert stats.pairs_in == 3 and stats.identical_dropped == 1
    assert stats.truncated == 1  # the last: a 3-token prompt and a 5-token response
    assert arrays["chosen_ids"].shape == (2, 2 + 3 + 1)
    # prompt keeps its last tokens, EOS ends each row, pad follows and is never EOS
    first = arrays["chosen_ids"][0][arrays["chosen_mask"][0] == 1]
    assert first[-1] == tok.eos_token_id
    assert tok.decode(first[:2]) .split() == ["movie", "was"]
    assert tok.pad_token_id != tok.eos_token_id


def test_gold_labels_by_max_prefer_the_higher_gold():
    task = get_task("sentiment")
    demos = task.demonstrations(64, seed=0)
    prompts = [d["prompt"] for d in demos[:32]]
    a = [d["completion"] for d in demos[:32]]
    b = [d["completion"] for d in demos[32:]]
    pairs, stats = preference.gold_labelled_pairs(prompts, [a, b], task.gold_reward,
                                                  np.random.default_rng(0), mode="max")
    assert stats.candidates == 32 and stats.ties_dropped == stats.ties == 32 - len(pairs)
    g_c = task.gold_reward([p.prompt for p in pairs], [p.chosen for p in pairs])
    g_r = task.gold_reward([p.prompt for p in pairs], [p.rejected for p in pairs])
    assert len(pairs) > 0 and np.all(g_c > g_r)
    np.testing.assert_allclose([p.margin for p in pairs], g_c - g_r, rtol=1e-5)


def test_calibration_table_is_symmetric():
    table = reward.calibration_table(np.array([2.0, -1.0, 0.5, 3.0]), bins=4)
    assert sum(row["count"] for row in table) == 8
    for row in table:
        assert row["lo"] <= row["predicted"] <= row["hi"]


def test_fit_normalization():
    raw = np.random.default_rng(0).normal(3.0, 2.5, size=1000)
    n = reward.fit_normalization(raw)
    scaled = n["gain"] * raw + n["bias"]
    assert abs(scaled.mean()) < 1e-6 and abs(scaled.std() - 1) < 1e-6


def _small_config():
    config = quickstart.get_config()
    config.model.update(d_model=32, d_ff=64)
    config.reward.update(num_train_pairs=64, num_eval_pairs=32, num_reference=32)
    config.train.batch_size = 16
    return config


def _one_step(settings, model_cfg, batch, axes, devices):
    mesh = parallel.make_mesh(axes, devices)
    init = reward.initial_params_fn(settings.seed, model_cfg, None)
    program = reward.build(settings, model_cfg, mesh, init).supervised
    state = jax.jit(program.init_state, out_shardings=program.state_shardings)()
    state, metrics = program.step(state, parallel.shard_batch(batch, mesh))
    return metrics, jax.device_get(jax.tree.leaves(state.params))


def test_sharded_reward_step_matches_one_device(tmp_path):
    config = _small_config()
    config.reward.center_coef = 0.01
    settings = RunSettings.from_config(config)
    data = reward.prepare_data(settings, str(tmp_path), None)
    model_cfg = resolve_config(settings.model, model_init="", vocab_size=len(data.tokenizer))
    batch = {k: v[:16] for k, v in data.train.items()}
    m1, p1 = _one_step(settings, model_cfg, batch, {"data": 1}, jax.devices()[:1])
    m8, p8 = _one_step(settings, model_cfg, batch, {"data": 1, "fsdp": 4, "tensor": 2},
                       jax.devices())
    np.testing.assert_allclose(float(m8["rm/loss"]), float(m1["rm/loss"]), rtol=1e-5)
    for a, b in zip(p8, p1):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_reward_model_learns_noiseless_gold_labels(tmp_path):
    """Built-in task, labels by the larger gold score: >= 90% held-out accuracy."""
    workdir = tmp_path / "rm"
    run_cli("reward", "configs/reward/quickstart.py", workdir, "--config.reward.label_mode=max")
    summary = read_summary(workdir)
    assert summary["eval_accuracy"] >= 0.90, summary
    assert (workdir / workdir_lib.CALIBRATION_FILE).exists()

    # Reloaded from its workdir, the model scores the reference set (the task's
    # demonstrations) at mean 0 +- 0.05, std 1 +- 0.05.
    model = workdir_lib.load_reward_model(str(workdir))
    config = quickstart.get_config()
    reference = get_task("sentiment").demonstrations(
        config.reward.num_reference, seed=config.seed + 2)
    arrays = sft_data.tokenize_sft(reference, model.model.tokenizer, 33)
    scores = np.asarray(jax.jit(model.score)(arrays["input_ids"], arrays["attention_mask"]))
    assert abs(scores.mean()) < 0.05 and abs(scores.std() - 1.0) < 0.05
