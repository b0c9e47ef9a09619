"""Online (iterative) DPO: every round's pairs are sampled from the current policy.

``python -m jaxrlhf online_dpo --config=configs/online_dpo/quickstart.py --workdir=DIR
    --config.policy_init=SFT_WORKDIR --config.reward_init=RM_WORKDIR``

Offline DPO learns from pairs of the SFT policy fixed before training; online DPO (Guo et
al. 2024, "Direct language model alignment from online AI feedback"; Xu et al. 2023, "Some
things are more CRINGE than others: iterative preference optimization with the pairwise
cringe loss") labels fresh samples of the policy being trained. One step of the shared
loop is one round (``train.steps`` rounds, as PPO's steps are iterations):

1. sample K = ``online_dpo.samples_per_prompt`` responses to each of the round's
   ``online_dpo.prompts_per_round`` task prompts from the current policy;
2. score them by the reward model or the task's gold reward (``online_dpo.reward_source``;
   a response without EOS scores ``sampling.missing_eos_penalty``, PPO detail 5);
3. pair each prompt's best response with its worst — the iterative-DPO recipe of Xiong et
   al. 2024 ("Iterative preference learning from human feedback"); K = 2 is OAIF's one
   pair per prompt — labelled by ``online_dpo.label_mode``; a prompt whose K scores all
   tie gives no pair and is counted;
4. add the log-probs of the *SFT* policy: the reference stays fixed (Guo et al. 2024, §3);
5. take ``online_dpo.steps_per_round`` steps of the DPO-family loss (``dpo.*``,
   ``jaxrlhf.trainers.dpo_program``) on batches of ``train.batch_size`` of those pairs.

A round is a deterministic function of the state it starts from and the seed (its sampling
key, labelling draws and batch order come from the round index), so the checkpoint after
any round resumes the run exactly. Evaluations are PPO's and DPO's (``jaxrlhf.rl.evaluation``:
held-out gold and KL from the SFT policy), so online DPO lands on the same reward–KL plot.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, NamedTuple

import flax.struct
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from jaxrlhf import losses, parallel, workdir as workdir_lib
from jaxrlhf.checks import fail
from jaxrlhf.data import preference
from jaxrlhf.data.iterator import BatchIterator
from jaxrlhf.data.tokenizer import encode_prompts
from jaxrlhf.errors import ConfigError, DataError
from jaxrlhf.metrics import read_metrics
from jaxrlhf.models import lora as lora_lib
from jaxrlhf.models.transformer import CausalLM
from jaxrlhf.rl import evaluation, rewards as rewards_lib
from jaxrlhf.sections import SamplingSettings
from jaxrlhf.settings import RunSettings
from jaxrlhf.tasks import get_task
from jaxrlhf.tasks.base import Task, traceable_gold
from jaxrlhf.trainers import dpo_program, loop, supervised
from jaxrlhf.trainers.stage import (DryRunPrograms, Stage, abstract_batch, abstract_trained,
                                    policy_config, step_program, with_gold)
from jaxrlhf.workdir import RewardModel, TrainedModel

COUNTS = ("candidates", "ties", "ties_dropped")   # preference.LabelStats, summed over rounds


@flax.struct.dataclass
class OnlineState:
    """The loop's state: the DPO train state's fields (``params`` at the top, where a
    later stage's ``workdir.load_model`` reads them) and the label counts of every round
    so far (int32 scalars named :data:`COUNTS`)."""
    step: jax.Array        # int32: DPO optimizer steps, ``steps_per_round`` per round
    params: Any
    opt_state: Any
    counts: dict[str, jax.Array]

    def train_state(self) -> supervised.TrainState:
        return supervised.TrainState(step=self.step, params=self.params,
                                     opt_state=self.opt_state)


def sample_round(ev: evaluation.Evaluator, params: nnx.State, reward_params: nnx.State | None,
                 prompts: supervised.Batch, key: jax.Array, *, k: int,
                 sampling: SamplingSettings) -> dict[str, jax.Array]:
    """K responses to each prompt (``prompt_ids``, ``prompt_mask`` [n, P]) from the plain
    policy ``params``, rows ``i * K .. i * K + K - 1`` answering prompt i: the ``query``
    and ``response`` tokens with masks ([n * K, P], [n * K, R]), each response's
    log-prob under the sampler (``logprob`` [n * K], at ``ev.temperature``), its
    ``score`` (the labelling reward, after the missing-EOS penalty) and ``gold``."""
    query = jnp.repeat(prompts["prompt_ids"], k, axis=0)                  # [n * K, P]
    query_mask = jnp.repeat(prompts["prompt_mask"], k, axis=0)
    out = ev.sample(params, query, query_mask, key)
    gold, score = ev.score(query, query_mask, out.tokens, out.mask, reward_params)
    if sampling.penalize_missing_eos:                                   # PPO detail 5
        has_eos = jnp.any((out.tokens == ev.eos_id) & (out.mask == 1), axis=-1)
        score = rewards_lib.apply_missing_eos_penalty(score, has_eos,
                                                      sampling.missing_eos_penalty)
    return {"query": query, "query_mask": query_mask, "response": out.tokens,
            "response_mask": out.mask, "logprob": out.logprobs.sum(-1), "score": score,
            "gold": gold}


def best_and_worst(score: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows of each prompt's highest and lowest ``score`` [n * K] among its K consecutive
    rows (the first of equal ones), each [n]."""
    by_prompt = score.reshape(-1, k)                                     # [n, K]
    first = np.arange(len(by_prompt)) * k
    return first + by_prompt.argmax(1), first + by_prompt.argmin(1)


def label_best_and_worst(score: np.ndarray, k: int, rng: np.random.Generator, *, mode: str,
                         temperature: float
                         ) -> tuple[np.ndarray, np.ndarray, preference.LabelStats]:
    """The chosen and rejected rows [pairs] of one pair per prompt, its best response
    against its worst, labelled by ``mode`` (``preference.label_by_scores``: ``max``
    chooses the best, ``bradley_terry`` draws); a prompt whose K scores all tie gives no
    pair (counted as a tie, dropped, in either mode)."""
    best, worst = best_and_worst(score, k)
    tie = score[best] == score[worst]
    best, worst = best[~tie], worst[~tie]
    keep, best_wins, _ = preference.label_by_scores(score[best], score[worst], rng, mode=mode,
                                                    temperature=temperature)
    chosen, rejected = np.where(best_wins, best, worst), np.where(best_wins, worst, best)
    stats = preference.LabelStats(candidates=len(tie), ties=int(tie.sum()),
                                  ties_dropped=int(tie.sum()))
    return chosen[keep], rejected[keep], stats


def pair_rows(samples: dict[str, np.ndarray], chosen: np.ndarray,
              rejected: np.ndarray) -> dict[str, np.ndarray]:
    """The pairs as ``dpo_program`` reads them: ``[left-padded prompt][response]`` rows
    (``chosen_ids`` / ``_mask``, ``rejected_ids`` / ``_mask`` [pairs, P + R]), the padded
    prompt width as every row's ``prompt_length`` (its padding is masked) and the score
    difference as ``margin``, each [pairs]."""
    seq = np.concatenate([samples["query"], samples["response"]], axis=1)
    mask = np.concatenate([samples["query_mask"], samples["response_mask"]], axis=1)
    width = samples["query"].shape[1]
    return {"chosen_ids": seq[chosen], "chosen_mask": mask[chosen],
            "rejected_ids": seq[rejected], "rejected_mask": mask[rejected],
            "prompt_length": np.full(len(chosen), width, np.int32),
            "margin": (samples["score"][chosen] - samples["score"][rejected]).astype(np.float32)}


class RoundPairs(NamedTuple):
    """One round's pairs (with the reference's log-probs), the samples they were drawn
    from, which rows of those are each pair's chosen and rejected response, and the
    label counts."""
    pairs: dict[str, np.ndarray]
    samples: dict[str, np.ndarray]
    chosen: np.ndarray
    rejected: np.ndarray
    stats: preference.LabelStats


def round_metrics(r: RoundPairs) -> dict[str, float]:
    """``online/*``: the round's pair and tie counts, and the mean score, gold and length of
    its samples and of its chosen and rejected responses."""
    s = r.samples
    return {"online/pairs": float(len(r.chosen)), "online/ties": float(r.stats.ties),
            "online/score": float(s["score"].mean()), "online/gold": float(s["gold"].mean()),
            "online/score_chosen": float(s["score"][r.chosen].mean()),
            "online/score_rejected": float(s["score"][r.rejected].mean()),
            "online/response_length": float(s["response_mask"].sum(-1).mean())}


class Rounds:
    """The loop's step: one round of online DPO from the state it is given (see the module
    docstring). The reference (the SFT policy, under LoRA the adapters' base) and the
    reward model stay placed on the mesh for the whole run."""

    def __init__(self, settings: RunSettings, program: supervised.Program,
                 policy: TrainedModel, reward: RewardModel | None, task: Task, mesh: Mesh):
        o, g, adapters = settings.online_dpo, settings.sampling, settings.lora.config
        tok = policy.tokenizer
        self.settings, self.program, self.mesh, self.graphdef = settings, program, mesh, \
            policy.graphdef
        ev = evaluation.Evaluator.of(
            policy.graphdef, traceable_gold(task, tok), reward.model.graphdef if reward else None,
            reward.gain if reward else 1.0, reward.bias if reward else 0.0, tok.eos_token_id,
            tok.pad_token_id, dataclasses.replace(g, temperature=o.temperature))
        place = lambda params: parallel.place(params, mesh, settings.rules)  # noqa: E731
        start = (policy.params if adapters is None
                 else lora_lib.cast(policy.params, settings.lora.base_dtype))
        self.reference = place(start)
        self.reward_params = place(reward.model.params) if reward else None
        self.needs_reference = settings.dpo.loss not in losses.REFERENCE_FREE_LOSSES

        @jax.jit
        def sample(params, frozen, reward_params, prompts, round_index):
            full = lora_lib.join(frozen, params)
            plain = lora_lib.merge(full, adapters.scale) if adapters is not None else full
            key = jax.random.fold_in(jax.random.key(settings.seed), round_index)
            return sample_round(ev, plain, reward_params, prompts, key, k=o.samples_per_prompt,
                                sampling=g)

        self._sample = sample

    def rng(self, round_index: int) -> np.random.Generator:
        """The round's host randomness (labelling draws, then the batch order)."""
        return np.random.default_rng([self.settings.seed, round_index])

    def pairs(self, params: nnx.State, prompts: supervised.Batch, round_index: int,
              rng: np.random.Generator) -> RoundPairs:
        """Round ``round_index``'s pairs: sampled with the trained ``params`` (placed) on
        the placed ``prompts``, labelled with ``rng``, with the SFT reference's log-probs."""
        o, t = self.settings.online_dpo, self.settings.train
        samples = parallel.fetch(self._sample(params, self.program.frozen, self.reward_params,
                                              prompts, jnp.int32(round_index)))
        chosen, rejected, stats = label_best_and_worst(
            samples["score"], o.samples_per_prompt, rng, mode=o.label_mode,
            temperature=o.label_temperature)
        if len(chosen) < t.batch_size:
            raise DataError(
                f"online DPO round {round_index}: {len(chosen)} of "
                f"{o.prompts_per_round} prompts gave a pair ({stats.ties} had K="
                f"{o.samples_per_prompt} equal scores), fewer than one batch of "
                f"config.train.batch_size={t.batch_size}; raise "
                "config.online_dpo.prompts_per_round or samples_per_prompt")
        arrays = dpo_program.with_reference(pair_rows(samples, chosen, rejected),
                                            dpo_program.PAIRS, self.graphdef, self.reference,
                                            t.batch_size, self.mesh, self.needs_reference)
        return RoundPairs(arrays, samples, chosen, rejected, stats)

    def __call__(self, state: OnlineState,
                 prompts: supervised.Batch) -> tuple[OnlineState, dict[str, Any]]:
        """One round: pairs from ``state``'s policy, then ``steps_per_round`` DPO steps on
        them; the DPO metrics are means over those steps, beside :func:`round_metrics`."""
        o, t = self.settings.online_dpo, self.settings.train
        round_index = int(parallel.fetch(state.step)) // o.steps_per_round
        rng = self.rng(round_index)
        r = self.pairs(state.params, prompts, round_index, rng)
        batches = BatchIterator(r.pairs, t.batch_size, seed=int(rng.integers(2 ** 31)))
        train, steps = state.train_state(), []
        for _ in range(o.steps_per_round):
            train, metrics = self.program.step(train, parallel.shard_batch(next(batches),
                                                                           self.mesh))
            steps.append(metrics)
        counts = {name: jax.device_put(state.counts[name] + getattr(r.stats, name),
                                       parallel.replicated(self.mesh)) for name in COUNTS}
        means = jax.tree.map(lambda *x: jnp.mean(jnp.stack(x)), *steps)
        return (OnlineState(train.step, train.params, train.opt_state, counts),
                {**means, **round_metrics(r)})


def online_state(program: supervised.Program, mesh: Mesh
                 ) -> tuple[Callable[[], OnlineState], Any, Any]:
    """``init_state``, the abstract state and the state shardings of the loop's state: the
    program's train state and zero counts (replicated)."""
    replicated = parallel.replicated(mesh)

    def wrap(train, counts):
        return OnlineState(train.step, train.params, train.opt_state, counts)

    def init_state() -> OnlineState:
        zeros = {name: jax.device_put(jnp.int32(0), replicated) for name in COUNTS}
        return wrap(program.init_state(), zeros)

    abstract = wrap(program.abstract_state,
                    {name: jax.ShapeDtypeStruct((), jnp.int32) for name in COUNTS})
    shardings = wrap(program.state_shardings, {name: replicated for name in COUNTS})
    return init_state, abstract, shardings


def round_settings(settings: RunSettings) -> RunSettings:
    """The settings of the DPO program under the rounds: ``train.steps`` rounds of
    ``steps_per_round`` optimizer steps (the learning-rate schedule's length)."""
    steps = settings.train.steps * settings.online_dpo.steps_per_round
    return dataclasses.replace(settings, train=dataclasses.replace(settings.train, steps=steps))


def load_reward(settings: RunSettings, policy: TrainedModel) -> RewardModel | None:
    """The reward model in ``reward_init`` (None with ``reward_source='gold'``), checked to
    read the policy's tokens."""
    if settings.online_dpo.reward_source == "gold":
        return None
    if not settings.reward_init:
        raise ConfigError("config.reward_init is empty: pass the workdir of a finished "
                          "reward-model run, or set --config.online_dpo.reward_source=gold")
    reward = workdir_lib.load_reward_model(settings.reward_init)
    if len(reward.model.tokenizer) != len(policy.tokenizer):
        raise ConfigError(f"the reward model in {settings.reward_init} uses a different "
                          f"tokenizer ({len(reward.model.tokenizer)} tokens) from the policy "
                          f"in {settings.policy_init} ({len(policy.tokenizer)}); train it "
                          "with --config.policy_init=SFT_WORKDIR")
    return reward


def train(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Run (or resume) online DPO from the SFT policy in ``policy_init``."""
    settings = RunSettings.from_config(config)
    o, g = settings.online_dpo, settings.sampling
    if not settings.policy_init:
        raise ConfigError("config.policy_init is empty: pass the workdir of a finished SFT run "
                          "(--config.policy_init=SFT_WORKDIR)")
    mesh = parallel.make_mesh(settings.mesh)
    policy = workdir_lib.load_model(settings.policy_init, CausalLM)
    reward, task = load_reward(settings, policy), get_task(settings.data.task)
    tok = workdir_lib.run_tokenizer(workdir, inherited=policy.tokenizer)
    workdir_lib.write_model_card(workdir, policy.model_config, "params",
                                 lora=settings.lora.config, base=settings.policy_init,
                                 base_dtype=settings.lora.base_dtype)
    program = dpo_program.build(round_settings(settings), policy, mesh)
    rounds = Rounds(settings, program, policy, reward, task, mesh)
    ids, mask = encode_prompts(tok, task.prompts(o.num_prompts, seed=settings.seed),
                               g.prompt_length)
    sample_eval = supervised.policy_evaluation(settings, program, policy, task, mesh)
    init_state, abstract, shardings = online_state(program, mesh)
    state = loop.run(
        workdir=workdir, train=settings.train, config=config, mesh=mesh, init_state=init_state,
        state_shardings=shardings, step_fn=rounds,
        batches=BatchIterator({"prompt_ids": ids, "prompt_mask": mask}, o.prompts_per_round,
                              seed=settings.seed),
        evaluate=lambda state: sample_eval(state.params),
        count_tokens=lambda b: int(b["prompt_mask"].sum()), desc="online_dpo",
        abstract_state=abstract, progress_keys=("loss", "online/score", "online/pairs"))
    evals = [row for row in read_metrics(workdir) if "eval/gold" in row]
    counts = {name: int(parallel.fetch(state.counts[name])) for name in COUNTS}
    summary = {**evaluation.before_after(evals), "rounds": settings.train.steps,
               "steps": int(parallel.fetch(state.step)),
               "pairs": counts["candidates"] - counts["ties_dropped"], "label_counts": counts,
               "samples_per_prompt": o.samples_per_prompt, "reward_source": o.reward_source,
               "loss": settings.dpo.loss, "beta": settings.dpo.beta}
    workdir_lib.write_json(workdir, workdir_lib.SUMMARY_FILE, summary)
    return summary


def check(settings: RunSettings, num_devices: int) -> None:
    """The DPO batches split over the data-parallel devices, and so do each round's
    prompts, which give at most one pair each: at least one batch of them."""
    settings.check_batches(num_devices)
    if settings.dpo.unpaired:
        fail("dpo.loss", settings.dpo.loss, "learns from unpaired examples, and online DPO "
             f"builds pairs: use one of {tuple(losses.PREFERENCE_LOSSES)}")
    o, dp = settings.online_dpo, settings.data_parallel_size(num_devices)
    if o.prompts_per_round % dp:
        fail("online_dpo.prompts_per_round", o.prompts_per_round,
             f"must be divisible by the data-parallel size {dp}")
    if o.prompts_per_round < settings.train.batch_size:
        fail("online_dpo.prompts_per_round", o.prompts_per_round,
             f"gives at most one pair per prompt, fewer than one batch of "
             f"train.batch_size={settings.train.batch_size}")


def dry_run(settings: RunSettings, mesh: Mesh) -> DryRunPrograms:
    """The DPO step over abstract weights and a batch of the rounds' pairs
    (``sampling.prompt_length + response_length`` tokens per row)."""
    program = dpo_program.build(round_settings(settings),
                                abstract_trained(CausalLM, policy_config(settings)), mesh)
    b, n = settings.train.batch_size, settings.sampling.prompt_length + \
        settings.sampling.response_length
    kind = dpo_program.PAIRS
    rows = {f"{row}_{part}": ((b, n), jnp.int32) for row in kind.rows
            for part in ("ids", "mask")}
    scalars = {k: ((b,), jnp.float32) for k in (*kind.scalars, *kind.reference_fields)}
    return step_program(program, abstract_batch(mesh, **rows, **scalars,
                                                prompt_length=((b,), jnp.int32)))


STAGE = Stage(
    name="online_dpo", help="online (iterative) DPO: rounds of pairs sampled from the current "
                            "policy, labelled by a reward, reference fixed to the SFT policy",
    sections=("online_dpo", "dpo", "sampling"), train=train, produces="policy",
    reads=("policy", "reward_model"), has_steps=True, dry_run=dry_run, check=check,
    headline=lambda s: with_gold(f"online {s.get('loss', 'dpo').upper()}, "
                                 f"{s.get('rounds', 'n/a')} rounds, "
                                 f"{s.get('pairs', 'n/a')} pairs", s))
