"""The pretraining stage: packed raw text, loss on every token, bits per byte; it resumes
exactly, and its output starts every later stage."""
import json
import math
import os

import numpy as np
import pytest

import jaxrlhf
from conftest import REPO, metric_rows, run_cli
from jaxrlhf import config as config_lib
from jaxrlhf.data import corpus, packing

QUICKSTART = os.path.join(REPO, "configs", "pretrain", "quickstart.py")
TINY = {"data.source": "", "data.num_train": 160, "data.num_eval": 40, "data.max_len": 32,
        "data.bpe_vocab_size": 300, "model.d_model": 32, "model.n_heads": 2,
        "model.n_kv_heads": 2, "model.d_ff": 64, "model.n_layers": 1, "model.max_seq_len": 40,
        "train.batch_size": 8, "train.steps": 40, "train.eval_every": 20,
        "train.checkpoint_every": 20, "train.log_every": 5, "train.num_samples": 1,
        "train.sample_tokens": 8, "train.tensorboard": False}


def _config(**changes):
    return jaxrlhf.load_config(QUICKSTART, **{**TINY, **changes})


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("pretrain"))
    return jaxrlhf.run("pretrain", _config(), workdir)


def test_pretraining_lowers_held_out_loss_and_reports_bits_per_byte(pretrained):
    s = pretrained.summary
    assert s["eval_loss"] < s["first_eval_loss"] - 0.5, s
    assert s["first_eval_loss"] == pytest.approx(math.log(len_vocab(pretrained.workdir)),
                                                 abs=0.6)  # a random model: ~ln(vocab)
    # bits per byte = loss per token x tokens / (bytes x ln 2), on the held-out documents
    texts = corpus.generated_corpus(200, seed=0)[160:]
    eval_bytes = sum(len(t.encode("utf-8")) for t in texts)
    assert s["data_counts"]["eval_bytes"] == eval_bytes
    tokens = s["data_counts"]["eval"]["tokens"]
    assert s["eval_bits_per_byte"] == pytest.approx(
        s["eval_loss"] * tokens / (eval_bytes * math.log(2)), rel=1e-9)
    assert s["step"] == 40 and s["epochs"] == pytest.approx(
        40 * 8 / s["data_counts"]["train"]["rows"])


def len_vocab(workdir):
    with open(os.path.join(workdir, "model.json")) as f:
        return json.load(f)["model"]["vocab_size"]


def test_every_token_is_packed_once_and_the_loss_counts_every_target(pretrained, tmp_path):
    """The training rows hold the documents' tokens with an EOS after each, in order, and
    the loss mask counts every token of a row but its first (attention across documents)."""
    from jaxrlhf.data.tokenizer import load_tokenizer
    from jaxrlhf.trainers.pretrain import documents, pack
    from jaxrlhf.settings import RunSettings
    settings = RunSettings.from_config(_config())
    tokenizer = load_tokenizer(os.path.join(pretrained.workdir, "tokenizer"))
    train_texts, _ = documents(settings)
    rows = pack(train_texts, tokenizer, settings, "train")
    stream = [t for ids in tokenizer(train_texts, add_special_tokens=False)["input_ids"]
              for t in (*ids, tokenizer.eos_token_id)]
    n = rows["input_ids"].size
    assert rows["input_ids"].reshape(-1).tolist() == stream[:n]
    assert len(stream) - n == rows.stats.dropped_tokens < settings.data.max_len
    assert rows["loss_mask"].sum() == rows["input_ids"].shape[0] * (settings.data.max_len - 1)


def test_segment_masked_pretraining_counts_no_cross_document_target(tmp_path):
    result = jaxrlhf.run("pretrain", _config(**{"pretrain.cross_document": False,
                                                "train.steps": 4, "train.eval_every": 4}),
                         str(tmp_path))
    assert result.summary["cross_document"] is False
    assert np.isfinite(result.summary["eval_loss"])
    seg = packing.pack_documents([[5, 6], [7, 8, 9]], eos_id=1, seq_len=7)["segment_ids"]
    assert packing.lm_arrays(packing.pack_documents([[5, 6], [7, 8, 9]], 1, 7),
                             cross_document=False)["loss_mask"].tolist() == [[0, 1, 1, 0, 1, 1, 1]]
    assert seg.tolist() == [[1, 1, 1, 2, 2, 2, 2]]


def test_an_interrupted_pretraining_resumes_bit_exactly(pretrained, tmp_path):
    config = _config(**{"train.run_steps": 25})
    jaxrlhf.run("pretrain", config, str(tmp_path))
    resumed = jaxrlhf.run("pretrain", jaxrlhf.api.with_overrides(config, {"train.run_steps": 0}),
                          str(tmp_path))
    assert resumed.summary["step"] == 40
    assert metric_rows(str(tmp_path)) == metric_rows(pretrained.workdir)


def test_the_command_line_runs_the_quickstart(tmp_path):
    overrides = [f"--config.{k}={v}" for k, v in TINY.items() if k != "train.tensorboard"]
    result = run_cli("pretrain", QUICKSTART, tmp_path / "run", *overrides,
                     "--config.train.steps=4", "--config.train.eval_every=2")
    assert "pretrain done: pretraining held-out loss" in result.stdout
    assert "bits per byte" in result.stdout


def test_a_pretrained_model_starts_sft_reward_and_ppo(pretrained, tmp_path):
    """pretrain -> SFT -> reward -> PPO, each stage starting from the policy before it (LoRA
    off: every parameter trains)."""
    stages = config_lib.load_config_file("configs/experiments/stages.py:smoke")
    chain = jaxrlhf.load_config("configs/pipeline/quickstart.py")
    chain.unlock()
    chain.stages = (("sft", "sft"), ("reward", "reward"), ("ppo", "ppo"))
    for name in ("sft", "reward", "ppo"):
        chain[name] = stages[name]
        chain[name].policy_init = pretrained.workdir     # the first stage's; wired after
        chain[name].model.update(d_model=32, n_heads=2, n_kv_heads=2, d_ff=64, max_seq_len=40)
    result = jaxrlhf.run("pipeline", chain, str(tmp_path / "chain"))
    assert [result.summary[n]["step"] for n in ("sft", "reward")] == [8, 6]
    assert result.summary["ppo"]["iterations"] == 2


@pytest.mark.slow
def test_a_pretrained_model_starts_dpo(pretrained, tmp_path):
    dpo = config_lib.load_config_file("configs/dpo/quickstart.py")
    dpo.update_from_flattened_dict({"policy_init": pretrained.workdir, "train.steps": 2,
                                    "train.batch_size": 8, "train.eval_every": 2,
                                    "reward.num_train_pairs": 16, "reward.num_eval_pairs": 8,
                                    "sampling.num_eval_prompts": 8, "train.tensorboard": False})
    assert jaxrlhf.run("dpo", dpo, str(tmp_path / "dpo")).summary["step"] == 2
