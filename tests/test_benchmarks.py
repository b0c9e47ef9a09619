"""Each benchmark runs at a tiny shape and writes its JSON fields; the FLOP count agrees
with XLA's own count of the compiled forward pass; the device table resolves known
accelerators."""
import json

import jax
import jax.numpy as jnp
import pytest

from benchmarks import common, decode, dpo, grpo, ppo, reward, sft
from jaxrlhf import scoring
from jaxrlhf.models.build import abstract_model, random_params
from jaxrlhf.models.transformer import CausalLM

PEAKS = ["--peak_tflops", "2.0", "--peak_gbps", "10.0"]
COMMON_FIELDS = ("benchmark", "model", "parameters", "peak_tflops", "peak_gbps", "peak_source",
                 "compiled_memory", "device_peak_bytes", "options", "environment")


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    """One results directory per test process: each benchmark writes NAME.json there once
    and every test that needs it (the report test needs them all) reads it back."""
    return tmp_path_factory.mktemp("results")


TINY = {  # each benchmark's arguments at a tiny shape
    "sft": ["--model", "gpt2_1x32", "--batch", "8", "--seq", "16", *PEAKS],
    "reward": ["--model", "llama_1x64", "--batch", "8", "--seq", "16", "--remat", "full",
               "--scan_layers", *PEAKS],
    "ppo": ["--model", "gpt2_1x32", "--batch", "16", "--prompt", "4", "--response", "4",
            "--minibatches", "2", "--epochs", "1", *PEAKS],
    "dpo": ["--model", "llama_1x64_kv2_tied", "--batch", "8", "--prompt", "4",
            "--response", "8", *PEAKS],
    "grpo": ["--model", "gpt2_1x32", "--prompts", "8", "--generations", "2", "--prompt", "4",
             "--response", "4", *PEAKS],
    # 32 new tokens: the per-step time is the difference of two generate calls, which a
    # busy machine can turn negative when the calls are a few steps apart
    "decode": ["--model", "llama_1x64", "--batch", "8", "--prompt", "8", "--new", "32",
               "--dtype", "bfloat16"],
}


def _run(module, results):
    """The benchmark's result at its ``TINY`` shape, run on first use in this process."""
    name = module.__name__.split(".")[-1]
    out = results / f"{name}.json"
    if not out.exists():
        module.main([*TINY[name], "--repeats", "2", "--json", str(out)])
    result = json.loads(out.read_text())
    for field in COMMON_FIELDS:
        assert field in result, field
    env = result["environment"]
    assert env["jax"] == jax.__version__ and env["devices"] == jax.device_count()
    assert result["compiled_memory"]["peak_bytes"] > 0
    assert result["parameters"] > 0
    return result


def _check_throughput(result, tokens):
    for stat in ("min", "median"):
        seconds = result["seconds_per_step"][stat]
        assert seconds > 0
        assert result[f"tokens_per_sec_{stat}"] == pytest.approx(tokens / seconds)
        assert result[f"mfu_{stat}"] == pytest.approx(
            result[f"model_tflops_{stat}"] / result["peak_tflops"])
    assert result["seconds_per_step"]["min"] <= result["seconds_per_step"]["median"]
    assert len(result["seconds_per_step"]["all"]) == 2


def test_sft_benchmark(results):
    r = _run(sft, results)
    assert r["benchmark"] == "sft" and r["tokens_per_step"] == 8 * 16
    assert r["peak_source"] == "command line" and r["peak_tflops"] == 2.0
    _check_throughput(r, 8 * 16)


def test_reward_benchmark(results):
    r = _run(reward, results)
    assert r["tokens_per_step"] == 2 * 8 * 16 and r["pairs_per_sec_min"] > 0
    _check_throughput(r, 2 * 8 * 16)


def test_ppo_benchmark(results):
    r = _run(ppo, results)
    for phase in ("iteration", "sampling", "rollout", "update", "scoring"):
        assert set(r["seconds"][phase]) >= {"min", "median"}, phase
    flops = r["model_flops"]
    assert flops["iteration"] == pytest.approx(flops["sampling"] + flops["scoring"]
                                               + flops["update"])
    assert r["mfu_min"] == pytest.approx(
        flops["iteration"] / r["seconds"]["iteration"]["min"] / 1e12 / 2.0)
    assert r["sampling_tokens_per_sec_min"] > 0


def test_dpo_benchmark_times_the_reference_forward_apart(results):
    r = _run(dpo, results)
    assert r["benchmark"] == "dpo" and r["tokens_per_step"] == 2 * 8 * 12
    t, flops = r["seconds"], r["model_flops"]
    for stat in ("min", "median"):
        assert t["step_and_reference"][stat] == pytest.approx(t["step"][stat]
                                                              + t["reference"][stat])
    assert r["pairs_per_sec_min"] == pytest.approx(8 / t["step_and_reference"]["min"])
    assert r["step_pairs_per_sec_min"] == pytest.approx(8 / t["step"]["min"])
    assert flops["step"] == pytest.approx(3 * flops["reference"])   # forward + backward
    assert r["mfu_min"] == pytest.approx(
        flops["step_and_reference"] / t["step_and_reference"]["min"] / 1e12 / 2.0)
    assert set(r["environment"]) >= {"cpu_model", "vector_isa", "xla_flags"}


def test_grpo_benchmark_is_one_update_of_prompts_x_generations_without_a_value_model(results):
    r = _run(grpo, results)
    assert r["benchmark"] == "grpo" and r["options"]["batch"] == 16
    assert (r["options"]["minibatches"], r["options"]["epochs"]) == (1, 1)
    cfg = common.model_config("gpt2_1x32", 8, argparse_options())
    lm, scalar = (common.flops_per_token(cfg, 8, train=False, head=h) for h in ("lm", "scalar"))
    # scoring: the policy's old log-probs, the reference and the reward model; no value model
    assert r["model_flops"]["scoring"] == pytest.approx(16 * 8 * (2 * lm + scalar))
    assert r["model_flops"]["update"] == pytest.approx(16 * 8 * 3 * lm)
    with pytest.raises(SystemExit):
        grpo.main(["--batch", "6", "--prompts", "8", "--generations", "2"])


def argparse_options():
    return common.parser("").parse_args([])


@pytest.mark.parametrize("name,kv,tied", [("llama_4x256", 1, False),
                                          ("llama_4x256_kv4_tied", 4, True),
                                          ("llama_4x256_kv2", 2, False)])
def test_llama_shapes_name_their_key_value_heads_and_tying(name, kv, tied):
    cfg = common.model_config(name, 64, argparse_options())
    assert (cfg.n_heads, cfg.n_kv_heads, cfg.d_ff, cfg.tie_embeddings) == (4, kv, 704, tied)
    with pytest.raises(SystemExit, match="llama_4x256_kv4_tied"):
        common.model_config("gpt2_4x256_tied", 64, argparse_options())


def test_decode_benchmark_measures_cpu_peaks(results):
    """Without --peak_* on a CPU the peaks are measured; the roofline fraction is the
    achieved bandwidth over that peak."""
    r = _run(decode, results)
    assert r["peak_source"].startswith("measured") and r["peak_gbps"] > 0
    cfg = r["options"]
    slots = cfg["prompt"] + cfg["new"]
    # llama_1x64: 1 layer, 2 query heads of 32 sharing 1 KV head; bf16 cache
    assert r["kv_cache_bytes"] == 2 * 1 * 8 * slots * 1 * 32 * 2
    assert r["bytes_per_token"] == pytest.approx(r["bytes_per_step"] / 8)
    for stat in ("min", "median"):
        assert r[f"roofline_fraction_{stat}"] == pytest.approx(
            r[f"achieved_gbps_{stat}"] / r["peak_gbps"])
        assert r[f"decode_tokens_per_sec_{stat}"] > 0


@pytest.mark.parametrize("name", ["gpt2_2x64", "llama_2x128"])
def test_flop_count_matches_xla_cost_analysis(name):
    """2 x matmul parameters + attention per token, against XLA's count of the compiled
    forward pass (which adds a few elementwise FLOPs)."""
    args = common.parser("").parse_args([])
    seq, batch = 64, 4
    cfg = common.model_config(name, seq, args)
    graphdef, _ = abstract_model(CausalLM, cfg)
    params = random_params(CausalLM, cfg, 0)
    ids = jnp.zeros((batch, seq), jnp.int32)
    fwd = jax.jit(lambda p: scoring.forward(graphdef, p, ids, jnp.ones_like(ids)))
    xla = fwd.lower(params).compile().cost_analysis()["flops"]
    ours = batch * seq * common.flops_per_token(cfg, seq, train=False)
    assert 0.9 < xla / ours < 1.15, (xla, ours)


def test_device_table_resolves_known_accelerators():
    assert common.device_entry("NVIDIA H100 80GB HBM3")["bfloat16"] == pytest.approx(989.4)
    assert common.device_entry("NVIDIA H100 PCIe")["hbm_gbps"] == 2000.0
    assert common.device_entry("NVIDIA H200")["hbm_gbps"] == 4800.0
    assert common.device_entry("TPU v5 lite")["bfloat16"] == 197.0
    assert common.device_entry("cpu") is None


def test_report_writes_the_tables_and_the_scaling_figures(results, tmp_path):
    """The report turns the benchmarks' JSON (and a scaling sweep) into the README's tables
    and two figures."""
    from benchmarks import report
    rows = [{"axis": axis, "model": f"gpt2_4x{w}", "seq": seq, "batch": 8,
             "parameters": 1e6 * w, "seconds_min": 0.01 * w * seq / 1e4,
             "seconds_median": 0.011 * w * seq / 1e4, "tokens_per_sec_min": 1.0,
             "model_tflops_min": 0.1, "mfu_min": 0.2}
            for axis, w, seq in [("seq", 256, 64), ("seq", 256, 128), ("size", 128, 128),
                                 ("size", 256, 128)]]
    (results / "scaling.json").write_text(json.dumps({"rows": rows}))
    for module in (sft, reward, ppo, dpo, grpo, decode):
        _run(module, results)
    text = report.main(["--results", str(results), "--figures", str(tmp_path)])
    for heading in ("Stage steps", "PPO iteration split", "GRPO step split",
                    "DPO step and reference forward", "Decoding", "Scaling"):
        assert f"### {heading}" in text
    assert text.count("| sft |") == 1 and "| ppo |" in text and "llama_1x64" in text
    assert "| dpo |" in text and "| grpo |" in text and "8 prompts x 2 x (4 + 4)" in text
    assert (results / "tables.md").read_text().strip() == text.strip()
    for axis in ("seq", "size"):
        assert (tmp_path / f"scaling_{axis}.png").stat().st_size > 1000


def _softplus_of_a_product(a, b):
    return jax.nn.softplus(a @ b).sum()


def test_op_profile_splits_a_traced_program_into_matmuls_and_the_code_outside(tmp_path):
    """A dot feeding an elementwise function: the profile has a matmul class and puts the
    time outside it on this file's function; the shares sum to one."""
    fn = jax.jit(_softplus_of_a_product)
    a = jnp.ones((256, 256))
    compiled = fn.lower(a, a).compile()
    jax.block_until_ready(compiled(a, a))
    summary = common.op_profile(lambda: compiled(a, a), compiled.as_text(), str(tmp_path), 3)
    classes = summary["by_class"]
    assert "matmul" in classes and summary["calls"] == 3
    assert sum(c["share"] for c in classes.values()) == pytest.approx(1.0)
    assert summary["seconds_in_thunks"] == pytest.approx(sum(c["seconds"] for c in
                                                             classes.values()))
    assert any("_softplus_of_a_product" in row["where"] for row in summary["outside_matmuls"])
    from benchmarks import op_profile
    assert op_profile.summarise(str(tmp_path), 3) == summary      # re-read from the files
