"""Bradley–Terry reward modelling on preference pairs.

``python -m jaxrlhf reward --config=configs/reward/quickstart.py --workdir=DIR``

The reward model is the transformer with a scalar head, scoring prompt + response at the
last real token (the EOS). After training, a gain and bias are fitted so that a reference
set of responses (the SFT demonstrations by default) scores mean 0 and std 1
(PPO_DETAILS item 9; Ziegler et al. 2019, §2.2); they are saved with the model in
``DIR/reward_normalization.json`` and applied by ``score`` whenever it scores.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import os
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh

from jaxrlhf import losses, optim, parallel, sampling
from jaxrlhf.data import preference, sft as sft_data, tasks
from jaxrlhf.data.iterator import BatchIterator
from jaxrlhf.models.config import ModelConfig
from jaxrlhf.models.transformer import CausalLM, ScalarModel
from jaxrlhf.trainers import common, loop
from jaxrlhf.trainers.loop import TrainState

NORMALIZATION_FILE = "reward_normalization.json"
CALIBRATION_FILE = "calibration.json"


def last_token_index(mask: jax.Array) -> jax.Array:
    """Index of the last real token of each row (left- or right-padded). mask: [batch, seq]."""
    seq = mask.shape[-1]
    return seq - 1 - jnp.argmax(jnp.flip(mask, axis=-1), axis=-1)


def raw_scores(graphdef: nnx.GraphDef, params: nnx.State, ids: jax.Array,
               mask: jax.Array) -> jax.Array:
    """Scalar-head output at each row's last real token. ids, mask: [batch, seq] -> [batch]."""
    model = nnx.merge(graphdef, params)
    values, _ = model(ids, sampling.positions_from_mask(mask), mask)   # [batch, seq]
    return jnp.take_along_axis(values, last_token_index(mask)[:, None], axis=-1)[:, 0]


def score(graphdef: nnx.GraphDef, params: nnx.State, ids: jax.Array, mask: jax.Array,
          gain: float | jax.Array = 1.0, bias: float | jax.Array = 0.0) -> jax.Array:
    """The normalised reward ``gain * raw + bias`` of each sequence. [batch]."""
    return gain * raw_scores(graphdef, params, ids, mask) + bias


def pair_scores(graphdef, params, batch) -> tuple[jax.Array, jax.Array]:
    """Scores of the chosen and rejected rows of a pair batch, in one forward pass."""
    ids = jnp.concatenate([batch["chosen_ids"], batch["rejected_ids"]], axis=0)
    mask = jnp.concatenate([batch["chosen_mask"], batch["rejected_mask"]], axis=0)
    scores = raw_scores(graphdef, params, ids, mask)
    n = batch["chosen_ids"].shape[0]
    return scores[:n], scores[n:]


def reward_loss(params: nnx.State, batch: loop.Batch, *, graphdef: nnx.GraphDef,
                use_margin: bool, center_coef: float) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Bradley–Terry loss (+ optional margin and centering) and its metrics, as means."""
    r_chosen, r_rejected = pair_scores(graphdef, params, batch)
    loss, metrics = losses.bradley_terry(
        r_chosen, r_rejected, batch["margin"] if use_margin else None)
    if center_coef > 0:
        center, center_metrics = losses.reward_centering(r_chosen, r_rejected, center_coef)
        loss = loss + center
        metrics = {**metrics, **center_metrics}
    return loss, {**metrics, "rm/total_loss": loss}


def reward_loss_sums(params, batch, **kwargs):
    """``reward_loss`` as sums over the pairs, for exact gradient accumulation."""
    n = batch["chosen_ids"].shape[0]
    loss, metrics = reward_loss(params, batch, **kwargs)
    return loss * n, {**jax.tree.map(lambda m: m * n, metrics), "pairs": jnp.float32(n)}


def train_step(state: TrainState, batch: loop.Batch, *, graphdef: nnx.GraphDef,
               optimizer: optax.GradientTransformation, schedule: optax.Schedule,
               grad_accum: int, use_margin: bool,
               center_coef: float) -> tuple[TrainState, dict[str, jax.Array]]:
    loss_fn = functools.partial(reward_loss_sums, graphdef=graphdef, use_margin=use_margin,
                                center_coef=center_coef)
    grads, sums = loop.accumulate_gradients(loss_fn, state.params, batch, grad_accum)
    pairs = sums.pop("pairs")
    grads = jax.tree.map(lambda g: g / pairs, grads)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    metrics = {k: v / pairs for k, v in sums.items()}
    metrics.update(loss=metrics["rm/total_loss"], grad_norm=optax.global_norm(grads),
                   lr=schedule(state.step))
    params = optax.apply_updates(state.params, updates)
    return TrainState(step=state.step + 1, params=params, opt_state=opt_state), metrics


@dataclasses.dataclass(frozen=True)
class Program:
    graphdef: nnx.GraphDef
    init_state: Callable[[], TrainState]
    state_shardings: Any
    step: Callable
    pair_scores: Callable     # (params, batch) -> (r_chosen, r_rejected)
    scores: Callable          # (params, ids, mask) -> raw scores


def build(config: ml_collections.ConfigDict, model_cfg: ModelConfig, mesh: Mesh,
          init_params: Callable[[], nnx.State]) -> Program:
    graphdef, _ = common.abstract_model(ScalarModel, model_cfg, head_init="normal")
    schedule = optim.warmup_cosine(config.optim, config.train.steps)
    optimizer = optim.adamw(config.optim, schedule)

    def init_state() -> TrainState:
        params = init_params()
        return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                          opt_state=optimizer.init(params))

    state_shardings = common.full_state_shardings(init_state, mesh, config)
    batch_sharding = parallel.batch_sharding(mesh)
    r = config.reward
    step = jax.jit(
        functools.partial(train_step, graphdef=graphdef, optimizer=optimizer,
                          schedule=schedule, grad_accum=config.train.grad_accum,
                          use_margin=r.use_margin, center_coef=r.center_coef),
        in_shardings=(state_shardings, batch_sharding),
        out_shardings=(state_shardings, parallel.replicated(mesh)), donate_argnums=0)
    pair_fn = jax.jit(functools.partial(pair_scores, graphdef),
                      in_shardings=(state_shardings.params, batch_sharding))
    score_fn = jax.jit(functools.partial(raw_scores, graphdef),
                       in_shardings=(state_shardings.params, batch_sharding, batch_sharding))
    return Program(graphdef, init_state, state_shardings, step, pair_fn, score_fn)


def calibration_table(margins: np.ndarray, bins: int = 10) -> list[dict[str, float]]:
    """Predicted P(chosen) = sigmoid(r_c - r_r) in bins vs the observed frequency.

    Each pair counts in both orders, (p, chosen) and (1 - p, rejected), so the table is
    symmetric and the observed frequency is that of "the row's first response was chosen".
    """
    p = 1.0 / (1.0 + np.exp(-margins))
    probs = np.concatenate([p, 1.0 - p])
    outcome = np.concatenate([np.ones_like(p), np.zeros_like(p)])
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(probs, edges) - 1, 0, bins - 1)
    table = []
    for b in range(bins):
        sel = which == b
        if sel.any():
            table.append({"lo": float(edges[b]), "hi": float(edges[b + 1]),
                          "count": int(sel.sum()), "predicted": float(probs[sel].mean()),
                          "observed": float(outcome[sel].mean())})
    return table


def evaluate_pairs(params, program: Program, batches, mesh,
                   gold_labelled: bool) -> tuple[dict[str, float], np.ndarray]:
    """Held-out accuracy, mean chosen / rejected reward and margin; and all margins.

    With gold-labelled pairs (whose ``margin`` column is ``g_chosen - g_rejected``) it also
    reports ``eval/rm/gold_accuracy``: agreement with the gold ordering, ties left out.
    """
    chosen, rejected = [], []
    for batch in batches:
        r_c, r_r = jax.device_get(program.pair_scores(params, parallel.shard_batch(batch, mesh)))
        chosen.append(r_c)
        rejected.append(r_r)
    r_c, r_r = np.concatenate(chosen), np.concatenate(rejected)
    margins = r_c - r_r
    metrics = {"eval/rm/accuracy": float((margins > 0).mean()),
               "eval/rm/chosen": float(r_c.mean()), "eval/rm/rejected": float(r_r.mean()),
               "eval/rm/margin": float(margins.mean()),
               "eval/rm/loss": float(np.mean(np.logaddexp(0.0, -margins)))}
    if gold_labelled:
        gold = np.concatenate([b["margin"] for b in batches])
        decided = gold != 0
        metrics["eval/rm/gold_accuracy"] = float((margins[decided] * gold[decided] > 0).mean())
    return metrics, margins


def fit_normalization(raw: np.ndarray) -> dict[str, float]:
    """Gain and bias taking ``raw`` to mean 0, std 1."""
    mean, std = float(raw.mean()), float(raw.std())
    gain = 1.0 / max(std, 1e-6)
    return {"gain": gain, "bias": -mean * gain, "reference_mean": mean,
            "reference_std": std, "reference_count": int(raw.size)}


@dataclasses.dataclass(frozen=True)
class RewardModel:
    """A trained reward model with its normalisation, as PPO and evaluation use it."""
    restored: common.Restored
    gain: float
    bias: float

    def score(self, ids: jax.Array, mask: jax.Array, params: nnx.State | None = None) -> jax.Array:
        """Normalised scores of sequences [batch, seq] -> [batch] (traceable)."""
        params = self.restored.params if params is None else params
        return score(self.restored.graphdef, params, ids, mask, self.gain, self.bias)


def load_reward_model(workdir: str) -> RewardModel:
    """The newest reward-model checkpoint in ``workdir`` and its fitted gain and bias."""
    path = os.path.join(workdir, NORMALIZATION_FILE)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} is missing: the reward-model run in {workdir} did not "
                                "finish; re-run it to completion")
    with open(path) as f:
        normalization = json.load(f)
    restored = common.load_model(workdir, ScalarModel, head_init="normal")
    return RewardModel(restored, normalization["gain"], normalization["bias"])


@dataclasses.dataclass
class RewardData:
    tokenizer: Any
    train: dict[str, np.ndarray]
    eval: dict[str, np.ndarray]
    reference: dict[str, np.ndarray]     # input_ids, attention_mask of reference responses
    stats: dict[str, str]


def policy_pairs(config, policy: common.Restored, prompts: list[str], seed: int) -> tuple[list[str], list[str]]:
    """Two sampled responses per prompt from the SFT policy (temperature ``reward.sample_temperature``)."""
    tok = policy.tokenizer
    ids, mask = common.left_pad([tok(p)["input_ids"] for p in prompts], tok.pad_token_id)
    generate = jax.jit(functools.partial(
        sampling.generate, policy.graphdef, max_new_tokens=config.reward.max_response_tokens,
        eos_id=tok.eos_token_id, pad_id=tok.pad_token_id,
        temperature=config.reward.sample_temperature))
    key_a, key_b = jax.random.split(jax.random.key(seed))
    a, b = (generate(policy.params, ids, mask, key) for key in (key_a, key_b))
    return (common.decode_rows(tok, a.tokens, a.mask),
            common.decode_rows(tok, b.tokens, b.mask))


def gold_pairs(config, task, n: int, seed: int,
               policy: common.Restored | None) -> list[preference.PreferencePair]:
    """Pairs on the task's prompts, labelled by its gold reward: two SFT-policy samples per
    prompt when a policy is given, else two of the task's demonstrations."""
    r = config.reward
    if policy is not None:
        prompts = task.prompts(n, seed=seed)
        responses_a, responses_b = policy_pairs(config, policy, prompts, seed)
    else:
        demos = task.demonstrations(2 * n, seed=seed)
        prompts = [d["prompt"] for d in demos[:n]]
        responses_a = [d["completion"] for d in demos[:n]]
        responses_b = [d["completion"] for d in demos[n:]]
    return preference.gold_labelled_pairs(
        prompts, responses_a, responses_b, task.gold_reward, np.random.default_rng(seed),
        mode=r.label_mode, temperature=r.label_temperature)


def file_pairs(config) -> tuple[list, list]:
    r = config.reward
    train = preference.pairs_from_records(sft_data.load_records(r.source, r.split))
    if r.eval_source:
        evals = preference.pairs_from_records(sft_data.load_records(r.eval_source, r.eval_split))
    else:
        train, evals = train[: r.num_train_pairs], train[r.num_train_pairs:]
    return train[: r.num_train_pairs], evals[: r.num_eval_pairs]


def prepare_data(config, workdir: str, policy: common.Restored | None) -> RewardData:
    r = config.reward
    task = None if r.source else tasks.get_task(config.data.task)
    if task is not None:
        train = gold_pairs(config, task, r.num_train_pairs, config.seed, policy)
        evals = gold_pairs(config, task, r.num_eval_pairs, config.seed + 1, policy)
        reference = task.demonstrations(r.num_reference, seed=config.seed + 2)
    else:
        train, evals = file_pairs(config)
        reference = [{"prompt": p.prompt, "completion": p.chosen} for p in train[: r.num_reference]]
    texts = [t for p in train for t in (p.prompt, p.chosen, p.rejected)]
    tokenizer = common.run_tokenizer(config, workdir, task=task, texts=texts,
                                     inherited=policy.tokenizer if policy else None)
    limits = dict(max_prompt_tokens=r.max_prompt_tokens,
                  max_response_tokens=r.max_response_tokens)
    train_arrays, train_stats = preference.tokenize_pairs(train, tokenizer, **limits)
    if len(train_arrays["margin"]) < config.train.batch_size:
        raise ValueError(f"only {len(train_arrays['margin'])} usable training pairs, fewer "
                         f"than config.train.batch_size={config.train.batch_size}")
    eval_arrays, eval_stats = preference.tokenize_pairs(evals, tokenizer, **limits)
    reference_arrays = sft_data.tokenize_sft(
        reference, tokenizer, r.max_prompt_tokens + r.max_response_tokens + 1)
    stats = {"train": train_stats.report(), "eval": eval_stats.report()}
    print(f"[reward] train {stats['train']}; eval {stats['eval']}")
    return RewardData(tokenizer, train_arrays, eval_arrays,
                      {k: reference_arrays[k] for k in ("input_ids", "attention_mask")}, stats)


def initial_params_fn(config, model_cfg: ModelConfig,
                      policy: common.Restored | None) -> Callable[[], nnx.State]:
    """Random scalar model, its trunk taken from the SFT policy when one is given."""
    def init() -> nnx.State:
        params = common.random_params(ScalarModel, model_cfg, config.seed, head_init="normal")
        if policy is not None:
            params["model"] = policy.params["model"]
        return params
    return init


def train(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Run (or resume) reward-model training, then fit and save the score normalisation."""
    mesh = parallel.make_mesh(config.mesh)
    policy = (common.load_model(config.policy_init, CausalLM) if config.policy_init else None)
    data = prepare_data(config, workdir, policy)
    model_cfg = policy.model_cfg if policy is not None else common.model_config(config, data.tokenizer)
    common.write_model_card(workdir, model_cfg, "params")
    program = build(config, model_cfg, mesh, initial_params_fn(config, model_cfg, policy))
    eval_batches = common.fixed_batches(data.eval, config.train.batch_size)
    gold_labelled = not config.reward.source

    def evaluate_state(state: TrainState) -> dict[str, float]:
        return evaluate_pairs(state.params, program, eval_batches, mesh, gold_labelled)[0]

    batches = BatchIterator(data.train, config.train.batch_size, seed=config.seed)
    state = loop.run(
        workdir=workdir, config=config, mesh=mesh, init_state=program.init_state,
        state_shardings=program.state_shardings, step_fn=program.step, batches=batches,
        evaluate=evaluate_state,
        count_tokens=lambda b: int(b["chosen_mask"].sum() + b["rejected_mask"].sum()),
        desc="reward")

    metrics, margins = evaluate_pairs(state.params, program, eval_batches, mesh, gold_labelled)
    with open(os.path.join(workdir, CALIBRATION_FILE), "w") as f:
        json.dump(calibration_table(margins), f, indent=2)
    raw = np.concatenate([
        np.asarray(jax.device_get(program.scores(state.params, *(
            parallel.shard_batch(b, mesh)[k] for k in ("input_ids", "attention_mask")))))
        for b in common.fixed_batches(data.reference, config.train.batch_size)])
    normalization = fit_normalization(raw)
    with open(os.path.join(workdir, NORMALIZATION_FILE), "w") as f:
        json.dump(normalization, f, indent=2)
    summary = {"eval_accuracy": metrics["eval/rm/accuracy"], **metrics,
               "data": data.stats, "normalization": normalization, "step": int(state.step)}
    with open(os.path.join(workdir, "summary.json"), "w") as f:
        json.dump(summary, f, indent=2)
    return summary
