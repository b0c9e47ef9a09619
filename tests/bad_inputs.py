"""Audit: run the command line on bad inputs and classify how each one is answered.

    python tests/bad_inputs.py [--only NAME_SUBSTRING] [--json OUT]

Not part of the pytest suite (it starts one process per case, ~80 of them). Each case is a
bad data file, a bad config value or a bad command-line argument, with what a good answer
must contain. A case is

* **clear**: a rejected input exits non-zero with no Python traceback, and its output
  names every expected token (the file and line, or the config field); an
  accepted-but-altered input (empty, truncated, dropped) exits 0 and the stage's data
  summary counts it;
* **unclear**: rejected, but with a traceback or without naming where;
* **silent**: accepted without a word (exit 0, nothing counted).
"""
from __future__ import annotations

import argparse
import dataclasses
import gzip
import json
import os
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

TINY = ["--config.train.steps=2", "--config.train.log_every=1", "--config.train.eval_every=2",
        "--config.train.checkpoint_every=2", "--config.train.tensorboard=False",
        "--config.model.d_model=32", "--config.model.d_ff=64", "--config.train.num_samples=1",
        "--config.train.sample_tokens=4", "--config.data.bpe_vocab_size=300"]
SFT = ["sft", "--config=configs/sft/quickstart.py", *TINY, "--config.train.batch_size=4",
       "--config.data.num_eval=4", "--config.data.num_train=64"]
REWARD = ["reward", "--config=configs/reward/quickstart.py", *TINY,
          "--config.train.batch_size=4", "--config.reward.num_train_pairs=16",
          "--config.reward.num_eval_pairs=4", "--config.reward.num_reference=4"]


@dataclasses.dataclass
class Case:
    name: str
    argv: list[str]
    expect: list[str]          # tokens a clear answer names
    accept: bool = False       # a valid-but-altered input: must succeed and be counted
    summary_key: str = ""      # (accept) dotted key of summary.json that must be > 0


def _good_sft(n=24):
    words = ["good", "bad", "fine", "dull", "great", "awful"]
    return [{"prompt": f"the movie was {words[i % 6]}", "completion": f" and {words[(i + 1) % 6]} ."}
            for i in range(n)]


def _good_pairs(n=24):
    words = ["good", "bad", "fine", "dull", "great", "awful"]
    return [{"prompt": "the movie was", "chosen": f" {words[i % 6]} .",
             "rejected": f" {words[(i + 1) % 6]} , {words[(i + 2) % 6]} ."} for i in range(n)]


def _jsonl(rows) -> bytes:
    return b"".join((r if isinstance(r, bytes) else json.dumps(r).encode()) + b"\n"
                    for r in rows)


def cases(tmp: str) -> list[Case]:
    out: list[Case] = []

    def write(name: str, content: bytes) -> str:
        path = os.path.join(tmp, name)
        if os.path.isdir(path):
            return path
        with open(path, "wb") as f:
            f.write(content)
        return path

    def sft_file(name, bad_row, line=6, fname="sft.jsonl", expect=None):
        rows = _good_sft()
        rows.insert(line - 1, bad_row)
        path = write(f"{name}_{fname}", _jsonl(rows))
        out.append(Case(f"sft/{name}", [*SFT, f"--config.data.source={path}"],
                        expect if expect is not None else [os.path.basename(path) + f":{line}"]))

    def pref_file(name, bad_row, line=6, expect=None):
        rows = _good_pairs()
        rows.insert(line - 1, bad_row)
        path = write(f"{name}_pref.jsonl", _jsonl(rows))
        out.append(Case(f"pref/{name}", [*REWARD, f"--config.data.source={path}"],
                        expect if expect is not None else [os.path.basename(path) + f":{line}"]))

    # --- SFT rows -------------------------------------------------------------------
    sft_file("messages_string", {"messages": "hello"}, expect=[":6", "messages"])
    sft_file("messages_ints", {"messages": [1, 2, 3]}, expect=[":6", "messages"])
    sft_file("messages_null", {"messages": None}, expect=[":6", "messages"])
    sft_file("messages_empty", {"messages": []}, expect=[":6", "messages"])
    sft_file("messages_last_user", {"messages": [{"role": "user", "content": "hi"}]},
             expect=[":6", "assistant"])
    sft_file("messages_no_content", {"messages": [{"role": "user", "content": "hi"},
                                                  {"role": "assistant"}]}, expect=[":6", "content"])
    sft_file("messages_content_int", {"messages": [{"role": "user", "content": 3},
                                                   {"role": "assistant", "content": "x"}]},
             expect=[":6", "content"])
    sft_file("messages_role_int", {"messages": [{"role": 1, "content": "a"},
                                                {"role": "assistant", "content": "x"}]},
             expect=[":6", "role"])
    sft_file("prompt_int", {"prompt": 3, "completion": "x"}, expect=[":6", "prompt"])
    sft_file("completion_null", {"prompt": "a", "completion": None}, expect=[":6", "completion"])
    sft_file("completion_list", {"prompt": "a", "completion": ["x"]}, expect=[":6", "completion"])
    sft_file("prompt_missing", {"completion": "x"}, expect=[":6", "prompt"])
    sft_file("both_layouts", {"prompt": "a", "completion": "b",
                              "messages": [{"role": "assistant", "content": "c"}]},
             expect=[":6", "messages"])
    sft_file("row_array", ["prompt", "completion"])
    sft_file("row_string", "just text")
    sft_file("row_number", 42)
    sft_file("malformed_json", b'{"prompt": "a", "completion": ')
    sft_file("nan_value", b'{"prompt": NaN, "completion": "x"}', expect=[":6", "prompt"])
    sft_file("non_utf8", b'{"prompt": "caf\xe9", "completion": "x"}')
    path = write("not_gzip.jsonl.gz", _jsonl(_good_sft()))
    out.append(Case("sft/not_gzip", [*SFT, f"--config.data.source={path}"],
                    ["not_gzip.jsonl.gz", "gzip"]))
    full = gzip.compress(_jsonl(_good_sft()))
    path = write("truncated.jsonl.gz", full[: len(full) // 2])
    out.append(Case("sft/truncated_gzip", [*SFT, f"--config.data.source={path}"],
                    ["truncated.jsonl.gz"]))
    path = write("empty.jsonl", b"")
    out.append(Case("sft/empty_file", [*SFT, f"--config.data.source={path}"],
                    ["empty.jsonl", "empty"]))
    path = write("blank.jsonl", b"\n  \n\n")
    out.append(Case("sft/blank_lines", [*SFT, f"--config.data.source={path}"],
                    ["blank.jsonl", "blank"]))
    out.append(Case("sft/missing_file", [*SFT, f"--config.data.source={tmp}/nope.jsonl"],
                    ["nope.jsonl"]))
    os.makedirs(os.path.join(tmp, "a_dir.jsonl"), exist_ok=True)
    out.append(Case("sft/directory", [*SFT, f"--config.data.source={tmp}/a_dir.jsonl"],
                    ["a_dir.jsonl"]))
    path = write("rows.txt", _jsonl(_good_sft()))
    out.append(Case("sft/unsupported_ext", [*SFT, f"--config.data.source={path}"],
                    ["rows.txt"]))
    path = write("dict.json", json.dumps({"prompt": "a"}).encode())
    out.append(Case("sft/json_not_list", [*SFT, f"--config.data.source={path}"], ["dict.json"]))
    path = write("strings.json", json.dumps(["a", "b"] * 20).encode())
    out.append(Case("sft/json_list_of_strings", [*SFT, f"--config.data.source={path}"],
                    ["strings.json", "row 0"]))
    path = write("broken.json", b'[{"prompt": "a", "completion": "b"},\n{"prompt": ')
    out.append(Case("sft/json_malformed", [*SFT, f"--config.data.source={path}"],
                    ["broken.json:2"]))
    path = write("garbage.parquet", b"not a parquet file at all")
    out.append(Case("sft/parquet_garbage", [*SFT, f"--config.data.source={path}"],
                    ["garbage.parquet"]))
    path = write("empty_text.jsonl", _jsonl(_good_sft() + [{"prompt": "", "completion": ""}] * 5))
    out.append(Case("sft/empty_prompt_and_completion", [*SFT, f"--config.data.source={path}"],
                    [], accept=True, summary_key="data_counts.train.empty_completion"))
    path = write("all_empty.jsonl", _jsonl([{"prompt": "", "completion": ""}] * 40))
    out.append(Case("sft/every_completion_empty", [*SFT, f"--config.data.source={path}"],
                    ["all_empty.jsonl", "completion"]))
    path = write("huge.jsonl", _jsonl([{"prompt": "the movie was",
                                        "completion": " good ." * 170_000}] + _good_sft()))
    out.append(Case("sft/one_mb_completion", [*SFT, f"--config.data.source={path}"],
                    [], accept=True, summary_key="data_counts.train.truncated"))
    path = write("few.jsonl", _jsonl(_good_sft(6)))
    out.append(Case("sft/fewer_rows_than_batch", [*SFT, f"--config.data.source={path}"],
                    ["few.jsonl", "train.batch_size"]))
    path = write("tiny.jsonl", _jsonl(_good_sft(3)))
    out.append(Case("sft/fewer_rows_than_num_eval", [*SFT, f"--config.data.source={path}"],
                    ["tiny.jsonl", "data.num_eval"]))
    path = write("ws.jsonl", _jsonl(_good_sft() + [{"prompt": "a", "completion": "   "}] * 5))
    out.append(Case("sft/whitespace_completion", [*SFT, f"--config.data.source={path}"],
                    [], accept=True, summary_key="data_counts.train.empty_completion"))
    good = write("good_sft.jsonl", _jsonl(_good_sft()))
    bad_eval = write("bad_eval.jsonl", _jsonl(_good_sft(3) + [{"prompt": 1, "completion": "x"}]))
    out.append(Case("sft/bad_eval_source", [*SFT, f"--config.data.source={good}",
                                            f"--config.data.eval_source={bad_eval}"],
                    ["bad_eval.jsonl:4", "prompt"]))

    # --- preference rows ------------------------------------------------------------
    pref_file("chosen_missing", {"prompt": "a", "rejected": "b"}, expect=[":6", "chosen"])
    pref_file("rejected_int", {"prompt": "a", "chosen": "b", "rejected": 3},
              expect=[":6", "rejected"])
    pref_file("prompt_number", {"prompt": 7, "chosen": "b", "rejected": "c"},
              expect=[":6", "prompt"])
    pref_file("prompt_null", {"prompt": None, "chosen": "b", "rejected": "c"},
              expect=[":6", "prompt"])
    pref_file("margin_string", {"prompt": "a", "chosen": "b", "rejected": "c", "margin": "abc"},
              expect=[":6", "margin"])
    pref_file("margin_nan", b'{"prompt": "a", "chosen": "b", "rejected": "c", "margin": NaN}',
              expect=[":6", "margin"])
    pref_file("margin_bool", {"prompt": "a", "chosen": "b", "rejected": "c", "margin": True},
              expect=[":6", "margin"])
    pref_file("margin_list", {"prompt": "a", "chosen": "b", "rejected": "c", "margin": [1]},
              expect=[":6", "margin"])
    pref_file("hh_no_shared_turn", {"chosen": "\n\nHuman: a\n\nAssistant: b",
                                    "rejected": "\n\nHuman: x\n\nAssistant: y"},
              expect=[":6", "Assistant"])
    pref_file("chosen_messages", {"prompt": "a", "chosen": [{"role": "assistant", "content": "b"}],
                                  "rejected": "c"}, expect=[":6", "chosen"])
    pref_file("row_list", [1, 2])
    pref_file("malformed_json", b'{"prompt": "a", "chosen": ')
    pref_file("non_utf8", b'{"prompt": "a", "chosen": "\xff\xfe", "rejected": "c"}')
    path = write("same.jsonl", _jsonl([{"prompt": "a", "chosen": "x", "rejected": "x"}] * 30))
    out.append(Case("pref/all_identical", [*REWARD, f"--config.data.source={path}"],
                    ["same.jsonl", "chosen == rejected"]))
    path = write("empty_pref.jsonl", b"")
    out.append(Case("pref/empty_file", [*REWARD, f"--config.data.source={path}"],
                    ["empty_pref.jsonl"]))
    path = write("pref_not_gzip.jsonl.gz", _jsonl(_good_pairs()))
    out.append(Case("pref/not_gzip", [*REWARD, f"--config.data.source={path}"],
                    ["pref_not_gzip.jsonl.gz", "gzip"]))
    path = write("empty_chosen.jsonl", _jsonl([
        {"prompt": "a", "chosen": "", "rejected": "b"}] * 2 + _good_pairs()))
    out.append(Case("pref/empty_chosen", [*REWARD, f"--config.data.source={path}"],
                    [], accept=True, summary_key="data_counts.train.empty_response"))
    path = write("few_pairs.jsonl", _jsonl(_good_pairs(3)))
    out.append(Case("pref/fewer_pairs_than_batch", [*REWARD, f"--config.data.source={path}"],
                    ["few_pairs.jsonl", "train.batch_size"]))
    good_pref = write("good_pref.jsonl", _jsonl(_good_pairs()))
    out.append(Case("pref/missing_eval_source", [*REWARD, f"--config.data.source={good_pref}",
                                                 f"--config.data.eval_source={tmp}/no.jsonl"],
                    ["no.jsonl"]))

    # --- config values ----------------------------------------------------------------
    def cfg(field, value, expect=None, base=SFT):
        out.append(Case(f"config/{field}={value}", [*base, f"--config.{field}={value}"],
                        expect or [f"config.{field}"]))

    cfg("data.max_len", 0)
    cfg("data.max_len", 1)
    cfg("data.num_train", 0)
    cfg("data.num_eval", 0)
    cfg("data.bpe_vocab_size", 0)
    cfg("data.task", "nonexistent")
    cfg("reward.max_prompt_tokens", 0, base=REWARD)
    cfg("train.steps", -1)
    cfg("train.steps", "abc", expect=["train.steps"])
    cfg("optim.learning_rate", "nan")
    cfg("optim.learning_rate", "inf")
    cfg("optim.b1", 1.5)
    cfg("optim.eps", -1.0)
    cfg("optim.weight_decay", -1.0)
    cfg("ppo.gamma", 2.0)
    cfg("ppo.lam", -0.5)
    cfg("ppo.kl_coef", "nan")
    cfg("ppo.clip_high", "inf")
    cfg("ppo.clip_low", 1.5)
    cfg("ppo.policy_loss", "trpo")
    cfg("ppo.loss_agg", "sum")
    cfg("model.d_model", 0)
    cfg("model.n_layers", 0)
    cfg("mesh.data", 3)
    cfg("train.batch_size", 0)
    cfg("train.keep_checkpoints", 0)
    cfg("sampling.temperature", 0.0)
    cfg("reward.label_temperature", -1.0, base=REWARD)
    cfg("train.num_samples", -1)
    cfg("train.sample_tokens", 0)
    cfg("data.tokenizer", "/nonexistent/tok")
    cfg("model_init", "/nonexistent/model")
    cfg("policy_init", "/nonexistent/sft", base=REWARD)
    cfg("data.source", "some-org/some-dataset", expect=["some-org/some-dataset"])
    out.append(Case("config/misspelt_ppo_field", [
        "ppo", "--config=configs/ppo/quickstart.py", "--config.ppo.kl_coeff=0.1"],
        ["unknown config field 'ppo.kl_coeff'", "ppo.kl_coef"]))
    out.append(Case("config/misspelt_top_level", [
        "pipeline", "--config=configs/pipeline/quickstart.py", "--config.kl_coef=0.1"],
        ["unknown config field 'kl_coef'", "ppo.ppo.kl_coef"]))
    out.append(Case("config/misspelt_stage_field", [
        "pipeline", "--config=configs/pipeline/quickstart.py", "--config.sft.train.stepz=3"],
        ["unknown config field 'sft.train.stepz'", "sft.train.steps"]))
    out.append(Case("config/ppo_missing_policy", [
        "ppo", "--config=configs/ppo/quickstart.py", "--config.policy_init=/nonexistent/sft"],
        ["policy_init", "/nonexistent/sft"]))
    out.append(Case("config/ppo_without_policy", [
        "ppo", "--config=configs/ppo/quickstart.py"], ["policy_init"]))
    out.append(Case("config/learning_rate_1e30", [*SFT, "--config.optim.learning_rate=1e30",
                                                  "--config.train.steps=6",
                                                  "--config.train.checkpoint_every=1"],
                    ["checkpoint"]))
    # --- methods beyond PPO, adapters, imported models -----------------------------------
    dpo = ["dpo", "--config=configs/dpo/quickstart.py", *TINY]
    grpo = ["ppo", "--config=configs/grpo/quickstart.py"]
    cfg("dpo.loss", "rpo", base=dpo)
    cfg("dpo.kto_threshold", "high", base=dpo)
    cfg("dpo.beta", -1.0, base=dpo)
    cfg("dpo.label_smoothing", 0.7, base=dpo)
    online = ["online_dpo", "--config=configs/online_dpo/quickstart.py", *TINY]
    cfg("online_dpo.samples_per_prompt", 1, base=online)
    cfg("online_dpo.reward_source", "human", base=online)
    cfg("online_dpo.prompts_per_round", 16, base=online)   # < one batch of 32 pairs
    cfg("lora.rank", -1)
    cfg("lora.targets", "(q", expect=["lora.targets"])
    cfg("lora.base_dtype", "int8")
    cfg("ppo.advantage", "vtrace", base=grpo)
    cfg("ppo.num_generations", 1, base=grpo, expect=["ppo.num_generations"])
    cfg("ppo.num_generations", 3, base=grpo, expect=["num_generations"])
    cfg("ppo.frozen_dtype", "float8", base=grpo)
    cfg("bon.split", "test", base=["bon", "--config=configs/bon/quickstart.py"])
    out.append(Case("dpo/without_policy", dpo, ["policy_init"]))
    out.append(Case("sft/lora_without_base", [*SFT, "--config.lora.rank=4"],
                    ["lora.rank", "policy_init"]))
    out.append(Case("bon/without_policy", ["bon", "--n=4"], ["policy_init"]))
    out.append(Case("bon/n_zero", ["bon", "--n=0"], ["bon.n"]))
    out.append(Case("export/not_a_run", ["export", f"--checkpoint={tmp}",
                                         f"--output={tmp}/hf_out"], [tmp]))

    def hf_dir(name: str, config: dict) -> str:
        path = os.path.join(tmp, name)
        os.makedirs(path, exist_ok=True)
        write(os.path.join(name, "config.json"), json.dumps(config).encode())
        return path

    gpt2 = {"model_type": "gpt2", "vocab_size": 512, "n_embd": 32, "n_layer": 1, "n_head": 2,
            "n_positions": 64, "layer_norm_epsilon": 1e-5}
    llama = {"model_type": "llama", "vocab_size": 512, "hidden_size": 32,
             "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2,
             "num_key_value_heads": 2, "max_position_embeddings": 64, "rms_norm_eps": 1e-5,
             "rope_theta": 10000.0, "hidden_act": "silu"}
    for name, config, field in [
            ("hf_relu", {**gpt2, "activation_function": "relu"}, "activation_function"),
            ("hf_layer_idx_scaling", {**gpt2, "scale_attn_by_inverse_layer_idx": True},
             "scale_attn_by_inverse_layer_idx"),
            ("hf_llama_gelu", {**llama, "hidden_act": "gelu"}, "hidden_act"),
            ("hf_rope_dynamic", {**llama, "rope_scaling": {"rope_type": "dynamic",
                                                           "factor": 2.0}}, "dynamic"),
            ("hf_rope_yarn", {**llama, "rope_scaling": {"rope_type": "yarn", "factor": 4.0}},
             "yarn"),
            ("hf_mlp_bias", {**llama, "mlp_bias": True}, "mlp_bias"),
            ("hf_mistral", {**llama, "model_type": "mistral"}, "mistral"),
            ("hf_qwen2_sliding", {**llama, "model_type": "qwen2", "use_sliding_window": True},
             "use_sliding_window")]:
        directory = hf_dir(f"hf_case_{len(out)}", config)   # a name that does not give it away
        out.append(Case(f"hf/{name}", [*SFT, f"--config.model_init={directory}"], [field]))
    out.append(Case("cli/unknown_stage", ["sfft"], ["sfft"]))
    out.append(Case("cli/sample_missing_prompts", [
        "sample", f"--checkpoint={tmp}", f"--prompts={tmp}/no_prompts.txt"], ["no_prompts.txt"]))
    out.append(Case("cli/sample_not_a_run", [
        "sample", f"--checkpoint={tmp}", f"--prompts={good}"], [tmp]))
    path = write("prompts.jsonl", _jsonl([{"prompt": "a"}, {"text": "b"}]))
    out.append(Case("cli/sample_bad_prompt_row", [
        "sample", f"--checkpoint={tmp}", f"--prompts={path}"], ["prompts.jsonl:2"]))
    out.extend(review_cases(tmp, write, gpt2, hf_dir))
    return out


def review_cases(tmp: str, write, gpt2: dict, hf_dir) -> list[Case]:
    """Cases of the same classes written later, by someone who had not seen the ones above
    (named ``review/...``)."""
    out = []

    def rows_file(name: str, rows: list, stage: list[str], field: str) -> Case:
        path = write(f"review_{name}.jsonl", _jsonl(rows))
        return Case(f"review/{name}", [*stage, f"--config.{field}={path}"],
                    [f"review_{name}.jsonl:3"])

    sft, pairs = _good_sft(), _good_pairs()
    out.append(rows_file("sft_prompt_dict",
                         [*sft[:2], {"prompt": {"t": 1}, "completion": "x"}, *sft[2:]],
                         SFT, "data.source"))
    out.append(rows_file("sft_message_not_object",
                         [*sft[:2], {"messages": ["user: hi"]}, *sft[2:]], SFT, "data.source"))
    out.append(rows_file("pref_chosen_dict", [*pairs[:2], {"prompt": "p", "chosen": {"a": 1},
                                                           "rejected": " b ."}, *pairs[2:]],
                         REWARD, "data.source"))
    out.append(rows_file("pref_margin_infinite",
                         [*pairs[:2], {**pairs[2], "margin": 1e999}, *pairs[3:]],
                         REWARD, "data.source"))
    out.append(rows_file("pref_row_null", [*pairs[:2], None, *pairs[2:]], REWARD,
                         "data.source"))
    path = write("review_empty.jsonl.gz", gzip.compress(b""))
    out.append(Case("review/sft_empty_gzip", [*SFT, f"--config.data.source={path}"],
                    ["review_empty.jsonl.gz"]))
    for field, value in [("train.grad_accum", 0), ("mesh.fsdp", 0), ("sampling.response_length", 0),
                         ("model.family", "gpt5"), ("model.dtype", "float16x"),
                         ("optim.grad_clip", -1.0), ("train.eval_every", 0)]:
        out.append(Case(f"review/config_{field}={value}", [*SFT, f"--config.{field}={value}"],
                        [field]))
    out.append(Case("review/config_reward.label_mode", [
        *REWARD, "--config.reward.label_mode=coinflip"], ["config.reward.label_mode"]))
    header = "from jaxrlhf.config import base_config\n\ndef get_config():\n    c = base_config()\n"
    for name, body, expect in [
            ("top_level", "    c.polciy_init = 'x'\n", ["polciy_init", "policy_init"]),
            ("section", "    c.train.update(dict(stepz=3))\n", ["train.stepz", "train.steps"]),
            ("no_get_config", None, ["get_config"]),
            ("syntax_error", "    return c(\n", ["review_cfg_syntax_error.py"])]:
        text = "x = 1\n" if body is None else header + body + ("    return c\n"
                                                               if "return" not in body else "")
        path = write(f"review_cfg_{name}.py", text.encode())
        out.append(Case(f"review/config_file_{name}", ["sft", f"--config={path}"], expect))
    out.append(Case("review/config_file_missing", ["sft", "--config=/nonexistent/cfg.py"],
                    ["/nonexistent/cfg.py"]))
    empty = os.path.join(tmp, "review_empty_dir")
    os.makedirs(empty, exist_ok=True)
    out.append(Case("review/hf_dir_without_config", [*SFT, f"--config.model_init={empty}"],
                    ["config.json"]))
    out.append(Case("review/tokenizer_dir_empty", [*SFT, f"--config.data.tokenizer={empty}"],
                    [empty]))
    bert = hf_dir("review_hf_bert", {**gpt2, "model_type": "bert"})
    out.append(Case("review/hf_model_type_bert", [*SFT, f"--config.model_init={bert}"],
                    ["bert"]))
    weightless = hf_dir("review_hf_no_weights", gpt2)
    out.append(Case("review/hf_dir_without_weights", [*SFT, f"--config.model_init={weightless}"],
                    ["safetensors"]))
    prompts = write("review_prompts.txt", b"my show was\n")
    for flag in ("--max_new_tokens=0", "--temperature=-1", "--top_p=2"):
        out.append(Case(f"review/sample_{flag[2:]}", [
            "sample", f"--checkpoint={tmp}", f"--prompts={prompts}", flag],
            [flag[2:].split("=")[0]]))
    return out


def run_case(case: Case, workdir: str) -> tuple[str, str]:
    argv = list(case.argv)
    if argv[0] != "sample" and len(argv) > 1:
        argv.insert(1, f"--workdir={workdir}")
    env = dict(os.environ, JAXRLHF_NO_PROGRESS="1")
    env.pop("JAXRLHF_DEBUG", None)
    env.pop("XLA_FLAGS", None)
    result = subprocess.run([sys.executable, "-m", "jaxrlhf", *argv], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=600)
    text = result.stdout + result.stderr
    if case.accept:
        if result.returncode != 0:
            return "unclear", text.strip().splitlines()[-1] if text.strip() else ""
        try:
            with open(os.path.join(workdir, "summary.json")) as f:
                value = json.load(f)
            for part in case.summary_key.split("."):
                value = value[part]
            return ("clear" if value > 0 else "silent"), f"{case.summary_key}={value}"
        except (KeyError, TypeError, FileNotFoundError):
            return "silent", f"summary.json lacks {case.summary_key}"
    if result.returncode == 0:
        return "silent", "exit 0"
    last = text.strip().splitlines()[-1] if text.strip() else ""
    if "Traceback (most recent call last)" in text:
        return "unclear", "traceback: " + last[:200]
    missing = [t for t in case.expect if t not in text]
    if missing:
        return "unclear", f"does not name {missing}: " + last[:200]
    return "clear", last[:200]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--only", default="")
    parser.add_argument("--json", default="")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        results = []
        for i, case in enumerate(c for c in cases(tmp) if args.only in c.name):
            start = time.perf_counter()
            verdict, detail = run_case(case, os.path.join(tmp, f"run{i}"))
            results.append({"name": case.name, "verdict": verdict, "detail": detail})
            print(f"{verdict:8s} {case.name:45s} {time.perf_counter() - start:5.1f}s  {detail}",
                  flush=True)
    counts = {v: sum(r["verdict"] == v for r in results) for v in ("clear", "unclear", "silent")}
    print(f"{len(results)} cases: {counts}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"counts": counts, "cases": results}, f, indent=2)


if __name__ == "__main__":
    main()
