"""KTO (Ethayarajh et al. 2024): the loss against a numpy transcription of the paper's
eqs. 7-8, its reduction on all-desirable data, the reference point from mismatched pairs
(clamped at 0, without gradient), and its unpaired data: files and gold thresholds."""
import json
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxrlhf
from jaxrlhf import losses, pairs as pairs_lib, scoring
from jaxrlhf.data import records, unpaired
from jaxrlhf.errors import ConfigError, DataError
from jaxrlhf.settings import RunSettings
from jaxrlhf.tasks import get_task


def _sig(x):
    return 1 / (1 + np.exp(-x))


def numpy_kto(policy, reference, policy_kl, reference_kl, desirable, beta, lam_d, lam_u):
    """The paper's eqs. 7-8: z_0 = max(0, mean over mismatched pairs of log pi / pi_ref),
    v = lam_D sigmoid(beta (r - z_0)) or lam_U sigmoid(beta (z_0 - r)), L = E[lam_y - v]."""
    z0 = max(0.0, float(np.mean(policy_kl.astype(np.float64) - reference_kl)))
    r = policy.astype(np.float64) - reference
    v = np.where(desirable, lam_d * _sig(beta * (r - z0)), lam_u * _sig(beta * (z0 - r)))
    lam = np.where(desirable, lam_d, lam_u)
    return float(np.mean(lam - v)), z0


def _examples(n, seed, kl_shift=0.0, desirable=None):
    rng = np.random.default_rng(seed)
    f = lambda *s: rng.normal(size=s).astype(np.float32)  # noqa: E731
    if desirable is None:
        desirable = rng.random(n) < 0.4
    return losses.UnpairedLogProbs(f(n) * 3 - 10, f(n) * 3 - 10, f(n) - 12 + kl_shift,
                                   f(n) - 12, np.asarray(desirable, np.float32))


@pytest.mark.parametrize("kl_shift", [2.0, -2.0])     # z_0 > 0, and a clamped z_0 = 0
@pytest.mark.parametrize("beta,lam_d,lam_u", [(0.1, 1.0, 1.0), (0.5, 1.33, 0.7)])
def test_kto_loss_is_the_papers_formula(kl_shift, beta, lam_d, lam_u):
    x = _examples(11, 0, kl_shift)
    loss, met = jax.jit(losses.kto_loss, static_argnums=(1, 2, 3))(x, beta, lam_d, lam_u)
    expected, z0 = numpy_kto(*map(np.asarray, x[:4]), np.asarray(x.desirable) > 0, beta,
                             lam_d, lam_u)
    np.testing.assert_allclose(loss, expected, rtol=1e-5)
    np.testing.assert_allclose(met["kto/kl"], z0, rtol=1e-5, atol=1e-7)
    assert (z0 == 0.0) == (kl_shift < 0)
    np.testing.assert_allclose(met["kto/kl_estimate"], np.mean(x.policy_kl - x.reference_kl),
                               rtol=1e-5)
    d = np.asarray(x.desirable) > 0
    r = beta * (np.asarray(x.policy) - np.asarray(x.reference))
    np.testing.assert_allclose(met["rewards/chosen"], r[d].mean(), rtol=1e-5)
    np.testing.assert_allclose(met["rewards/rejected"], r[~d].mean(), rtol=1e-5)
    right = np.where(d, r / beta > z0, r / beta < z0)
    np.testing.assert_allclose(met["rewards/accuracies"], right.mean())
    np.testing.assert_allclose(met["kto/desirable"], d.mean())


def test_configured_kto_is_its_formula():
    x = _examples(9, 1)
    s = types.SimpleNamespace(beta=0.2, kto_lambda_d=1.5, kto_lambda_u=0.5)
    np.testing.assert_allclose(losses.UNPAIRED_LOSSES["kto"](x, s)[0],
                               losses.kto_loss(x, 0.2, 1.5, 0.5)[0])


def test_all_desirable_with_lambda_u_zero_is_the_closed_form_and_z0_has_no_gradient():
    """With only desirable examples (lambda_U then weighs nothing), the paper's loss is
    lambda_D (1 - sigmoid(beta (r - z_0))) averaged; z_0 is a constant of the gradient, so
    d/dr_i = -lambda_D beta s (1 - s) / n and the reference-point inputs get none."""
    beta, lam_d, n = 0.3, 1.7, 8
    x = _examples(n, 2, 3.0, desirable=np.ones(n, bool))
    z0 = float(np.mean(x.policy_kl - x.reference_kl))
    assert z0 > 0
    r = np.asarray(x.policy, np.float64) - x.reference
    s = _sig(beta * (r - z0))
    loss_fn = lambda x: losses.kto_loss(x, beta, lam_d, 0.0)[0]  # noqa: E731
    np.testing.assert_allclose(loss_fn(x), lam_d * np.mean(1 - s), rtol=1e-5)
    g = jax.grad(loss_fn)(x)
    np.testing.assert_allclose(g.policy, -lam_d * beta * s * (1 - s) / n, rtol=1e-4)
    assert not np.any(g.policy_kl) and not np.any(g.reference_kl)
    assert not np.any(g.reference)      # the reference is frozen, as in DPO


def test_reference_point_is_the_clamped_mean_over_mismatched_pairs():
    x = _examples(6, 3)
    gap = np.asarray(x.policy_kl) - np.asarray(x.reference_kl)
    for shift in (-gap.mean() + 0.5, -gap.mean() - 0.5):
        shifted = x._replace(policy_kl=x.policy_kl + np.float32(shift))
        np.testing.assert_allclose(losses.kto_reference_point(shifted),
                                   max(0.0, gap.mean() + shift), rtol=1e-4, atol=1e-6)
    # the matched log-probs do not enter the reference point
    moved = x._replace(policy=x.policy + 5, reference=x.reference - 5)
    assert losses.kto_reference_point(moved) == losses.kto_reference_point(x)


def _tiny_model():
    from jaxrlhf.models.build import abstract_model, random_params
    from jaxrlhf.models.config import ModelConfig
    from jaxrlhf.models.transformer import CausalLM
    tok = get_task("sentiment").tokenizer
    cfg = ModelConfig.preset("gpt2", vocab_size=len(tok), d_model=32, n_layers=1, d_ff=64)
    return tok, abstract_model(CausalLM, cfg)[0], random_params(CausalLM, cfg, 0)


def test_kl_rows_pair_each_prompt_with_the_previous_completion_under_stop_gradient():
    """The stage's KTO loss reads the policy's log-probs of prompt i followed by completion
    i - 1 — each the sum of an independent forward pass's token log-probs — and its
    gradient is that of the same loss with z_0 a constant."""
    from jaxrlhf.trainers import dpo_program as dpo
    tok, graphdef, params = _tiny_model()
    examples = [unpaired.UnpairedExample("the movie was", " good .", True),
                unpaired.UnpairedExample("my food seemed", " very bad .", False),
                unpaired.UnpairedExample("that book", " quite dull", False)]
    arrays, stats = unpaired.tokenize_unpaired(examples, tok, max_prompt_tokens=4,
                                               max_response_tokens=4)
    assert stats.mismatched_same_prompt == 0 and stats.desirable == 1

    forward = jax.jit(lambda p, ids, mask: scoring.forward(graphdef, p, ids, mask))

    def independent_log_prob(prompt, completion):
        p = tok(prompt, add_special_tokens=False)["input_ids"]
        ids = p + tok(completion, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        row, mask = np.zeros((1, 12), np.int32), np.zeros((1, 12), np.int32)
        row[0, :len(ids)], mask[0, :len(ids)] = ids, 1       # one shape: one compile
        logits = forward(params, row, mask)[0]
        logp = np.asarray(jax.nn.log_softmax(logits.astype(jnp.float32)), np.float64)
        return sum(logp[t - 1, ids[t]] for t in range(len(p), len(ids)))

    batch = {k: jnp.asarray(v) for k, v in arrays.items()}
    logps, kl_logps = jax.jit(dpo.unpaired_log_probs, static_argnums=0)(graphdef, params,
                                                                         batch)
    for i, e in enumerate(examples):
        other = examples[i - 1]
        np.testing.assert_allclose(logps[i], independent_log_prob(e.prompt, e.completion),
                                   rtol=1e-5)
        np.testing.assert_allclose(kl_logps[i],
                                   independent_log_prob(e.prompt, other.completion), rtol=1e-5)
    batch.update(ref_completion_logps=logps - 0.4, ref_kl_logps=kl_logps - 2.0)
    objective = lambda x: losses.kto_loss(x, 0.5)  # noqa: E731

    def stage_loss(p):
        loss, metrics, count = dpo.kto_loss(graphdef, p, batch, objective=objective)
        return loss, (metrics["kto/kl"], count)

    def constant_z0(p):     # the KL rows' log-probs as numbers: no path to the parameters
        lp, _ = dpo.unpaired_log_probs(graphdef, p, batch)
        x = losses.UnpairedLogProbs(lp, batch["ref_completion_logps"], kl_logps,
                                    batch["ref_kl_logps"], batch["desirable"])
        return objective(x)[0]

    (grads, (z0, count)), expected = jax.jit(lambda p: (
        jax.grad(stage_loss, has_aux=True)(p), jax.grad(constant_z0)(p)))(params)
    assert count == 3
    np.testing.assert_allclose(z0, 2.0, rtol=1e-5)
    for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(expected)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-8)


def test_unpaired_file_rows_and_converted_pairs(tmp_path):
    path = tmp_path / "kto.jsonl"
    rows = [{"prompt": "a", "completion": " good", "label": True},
            {"prompt": "b", "completion": " bad", "label": False},
            {"prompt": "c", "chosen": " yes", "rejected": " no"},
            {"prompt": "d", "chosen": " fine", "rejected": " awful"}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    got = unpaired.examples_from_records(records.load_records(str(path)))
    # unpaired rows as they are; pairs as TRL converts them: the chosen ones, then the rejected
    assert [(e.prompt, e.completion, e.desirable) for e in got] == [
        ("a", " good", True), ("b", " bad", False), ("c", " yes", True), ("d", " fine", True),
        ("c", " no", False), ("d", " awful", False)]
    assert got[0].origin == f"{path}:1"


def test_a_row_without_label_names_its_line_and_the_fields(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps({"prompt": "a", "completion": " b", "label": True}) + "\n"
                    + json.dumps({"prompt": "a", "completion": " b"}) + "\n")
    with pytest.raises(DataError, match=r"bad.jsonl:2: .*'label' is missing"):
        unpaired.examples_from_records(records.load_records(str(path)))
    with pytest.raises(DataError, match=r"x:4: field 'label' must be true or false"):
        unpaired.example_from_row({"prompt": "a", "completion": " b", "label": 1}, "x:4")


def test_gold_labels_follow_the_threshold():
    prompts = ["p0", "p1", "p2"]
    responses = [["r00", "r01", "r02"], ["r10", "r11", "r12"]]    # [K][prompts]
    gold = {"r00": 0.5, "r01": -1.0, "r02": 0.0, "r10": 2.0, "r11": 0.1, "r12": -0.2}
    gold_reward = lambda p, r: np.array([gold[x] for x in r])  # noqa: E731
    for threshold, expected in ((None, np.median(list(gold.values()))), (0.0, 0.0)):
        examples, used = unpaired.gold_labelled_examples(prompts, responses, gold_reward,
                                                         threshold)
        assert used == expected
        assert [(e.prompt, e.completion) for e in examples] == [
            ("p0", "r00"), ("p1", "r01"), ("p2", "r02"), ("p0", "r10"), ("p1", "r11"),
            ("p2", "r12")]          # response by response: neighbours answer other prompts
        assert [e.desirable for e in examples] == [gold[e.completion] > used for e in examples]
    assert sum(e.desirable for e in examples) == 3 and not examples[2].desirable  # 0.0 == t


def test_task_examples_for_kto_are_labelled_by_the_configured_threshold(tmp_path):
    """On the built-in task (demonstrations, no policy), the examples the stage trains on
    are desirable exactly when the gold exceeds dpo.kto_threshold, and the held-out ones
    use the training split's median."""
    task = get_task("sentiment")
    for threshold in ("median", "0.25"):
        config = jaxrlhf.load_config("configs/dpo/quickstart.py", **{
            "dpo.loss": "kto", "dpo.kto_threshold": threshold, "reward.num_train_pairs": 48,
            "reward.num_eval_pairs": 16, "train.batch_size": 8})
        data = pairs_lib.prepare_pairs(RunSettings.from_config(config), str(tmp_path), None,
                                       "dpo")
        golds = task.gold_reward([e.prompt for e in data.train_rows],
                                 [e.completion for e in data.train_rows])
        t = data.counts["train"]["threshold"]
        assert t == (np.median(golds) if threshold == "median" else 0.25)
        assert data.counts["eval"]["threshold"] == t
        np.testing.assert_array_equal(data.train["desirable"], golds > t)
        assert len(data.train_rows) == 96     # both responses of the 48 pairs' prompts


@pytest.mark.parametrize("field,value", [("dpo.kto_threshold", "high"),
                                         ("dpo.kto_threshold", "nan"),
                                         ("dpo.kto_lambda_d", -1.0)])
def test_bad_kto_settings_name_the_field(field, value):
    config = jaxrlhf.load_config("configs/dpo/quickstart.py",
                                 **{"dpo.loss": "kto", field: value})
    with pytest.raises(ConfigError, match=f"config.{field}"):
        RunSettings.from_config(config)
