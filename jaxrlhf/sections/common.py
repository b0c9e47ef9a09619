"""The sections of every stage but PPO's (``jaxrlhf.sections.ppo``): ``optim``, ``train``,
``data``, ``sampling``, ``reward``, ``dpo``, ``bon``, ``pretrain``, ``lora``, ``logging``."""
from __future__ import annotations

import dataclasses
import math
import re

from jaxrlhf.checks import fail, in_range, positive
from jaxrlhf.data.preference import LABEL_MODES
from jaxrlhf.losses import PREFERENCE_LOSSES, UNPAIRED_LOSSES
from jaxrlhf.models.config import DTYPES
from jaxrlhf.models.lora import LoRAConfig
from jaxrlhf.tasks import TASKS

BON_SPLITS = ("eval", "train")
BEST_MODES = ("min", "max")
MIN_BPE_VOCAB = 258  # the 256 byte-level symbols, <|pad|> and <|endoftext|>
WANDB_PROJECT_FORBIDDEN = "/\\#?%:"   # characters W&B refuses in a project name
WANDB_TAG_MAX = 64                    # characters of one W&B tag


@dataclasses.dataclass(frozen=True)
class OptimSettings:
    """The optimizer of every stage. Supervised stages (SFT, reward, DPO, pretraining): AdamW
    with linear warm-up then cosine decay to ``end_lr_ratio`` of ``learning_rate``. PPO:
    Adam at ``learning_rate`` annealed linearly to 0 over the run's updates, with ``eps``
    (PPO details 16-17: 1e-5, as ``configs/ppo/quickstart.py`` sets it). Global-norm
    clipping at ``grad_clip`` (0: off) for both."""
    learning_rate: float = 1e-3
    warmup_steps: int = 20
    end_lr_ratio: float = 0.1
    weight_decay: float = 0.0
    b1: float = 0.9
    b2: float = 0.95
    eps: float = 1e-8
    grad_clip: float = 1.0

    def __post_init__(self):
        positive(self, "optim", ("learning_rate",))
        positive(self, "optim", ("warmup_steps", "grad_clip", "weight_decay", "eps"),
                  allow_zero=True)
        in_range(self, "optim", ("end_lr_ratio",), 0.0, 1.0)
        in_range(self, "optim", ("b1", "b2"), 0.0, 1.0, hi_open=True)


@dataclasses.dataclass(frozen=True)
class TrainSettings:
    """The shell's cadence. ``steps`` counts optimizer steps for the supervised stages,
    PPO *iterations* for PPO (each is ``ppo_epochs x num_minibatches`` optimizer steps) and
    *rounds* for online DPO (each ``online_dpo.steps_per_round`` optimizer steps);
    ``batch_size`` is the rows of one optimizer step (sequences, pairs) and, for PPO, the
    responses of one iteration (``batch_size / ppo.num_generations`` prompts);
    ``run_steps`` > 0 stops an invocation after that many and checkpoints (re-run resumes),
    for time-sliced jobs and resume tests. ``best_metric`` (e.g. ``eval/loss``; "": off) is
    early stopping by checkpoint selection: the state at the evaluation with the lowest
    (``best_mode`` "min") or highest ("max") value is kept in ``WORKDIR/best``, and it, not
    the last state, is what the stage reports and later stages load."""
    steps: int = 200
    batch_size: int = 32
    grad_accum: int = 1
    log_every: int = 10
    eval_every: int = 50
    checkpoint_every: int = 50
    keep_checkpoints: int = 3
    num_samples: int = 3           # samples printed and logged at each evaluation
    sample_tokens: int = 24        # their length (SFT and pretraining's greedy samples)
    tensorboard: bool = True
    run_steps: int = 0
    best_metric: str = ""
    best_mode: str = "min"

    def __post_init__(self):
        if self.best_mode not in BEST_MODES:
            fail("train.best_mode", self.best_mode, f"must be one of {BEST_MODES}")
        positive(self, "train", ("steps", "batch_size", "grad_accum", "log_every",
                                  "eval_every", "checkpoint_every", "keep_checkpoints"))
        positive(self, "train", ("run_steps", "num_samples"), allow_zero=True)
        positive(self, "train", ("sample_tokens",))
        if self.batch_size % self.grad_accum:
            fail("train.batch_size", self.batch_size,
                 f"must be divisible by train.grad_accum={self.grad_accum}")


@dataclasses.dataclass(frozen=True)
class DataSettings:
    """A stage's data: a built-in ``task``, or a local file / ``datasets`` name in
    ``source`` (SFT: {prompt, completion} or {messages} rows; reward and DPO: TRL {prompt,
    chosen, rejected} or Anthropic HH {chosen, rejected} pairs; pretraining: text), with
    ``eval_source`` (or the last rows of ``source``) held out. ``tokenizer`` "": the task's
    own, or a byte-level BPE of ``bpe_vocab_size`` trained on the data; else a local
    tokenizer directory or a hub id ``org/name[@revision]`` (``jaxrlhf.hub``)."""
    task: str = "sentiment"
    source: str = ""
    eval_source: str = ""
    split: str = "train"
    eval_split: str = "test"
    tokenizer: str = ""
    bpe_vocab_size: int = 1024
    max_len: int = 32              # tokens of one row (SFT: prompt + response; pretraining)
    num_train: int = 4096
    num_eval: int = 256

    def __post_init__(self):
        if self.task not in TASKS:
            fail("data.task", self.task, f"is not a built-in task; choose from {sorted(TASKS)}")
        positive(self, "data", ("num_train", "num_eval"))
        if self.max_len < 2:
            fail("data.max_len", self.max_len, "must be at least 2 (a token to read and one "
                 "to predict)")
        if self.bpe_vocab_size < MIN_BPE_VOCAB:
            fail("data.bpe_vocab_size", self.bpe_vocab_size, f"must be at least "
                 f"{MIN_BPE_VOCAB} (the byte alphabet and the pad and EOS tokens)")


@dataclasses.dataclass(frozen=True)
class SamplingSettings:
    """How a trained policy samples: PPO's and GRPO / RLOO's rollouts, and the held-out
    evaluation of every stage that trains a policy (SFT from a policy, DPO, PPO) and of
    best-of-n — ``num_eval_prompts`` task prompts of at most ``prompt_length`` tokens,
    responses of up to ``response_length`` at ``temperature`` with top-k / top-p (PPO
    details 3-4); after the first ``truncate_token_id`` (-1: none) at or past
    ``truncate_min_length`` a response is cut (detail 4); a response without EOS scores
    ``missing_eos_penalty`` when ``penalize_missing_eos`` (detail 5). The policy evaluation
    of PPO, DPO and SFT from a policy samples each held-out prompt ``eval_samples_per_prompt``
    times (the gold's s.e. is then over prompts; on an exact-match task pass@k for k up to
    it, ``jaxrlhf.rl.evaluation``)."""
    temperature: float = 0.7
    top_k: int = 0
    top_p: float = 1.0
    prompt_length: int = 8
    response_length: int = 24
    num_eval_prompts: int = 128
    eval_samples_per_prompt: int = 1
    truncate_token_id: int = -1
    truncate_min_length: int = 0
    penalize_missing_eos: bool = True
    missing_eos_penalty: float = -1.0

    def __post_init__(self):
        positive(self, "sampling", ("temperature", "prompt_length", "response_length",
                                     "num_eval_prompts", "eval_samples_per_prompt"))
        positive(self, "sampling", ("top_k", "truncate_min_length"), allow_zero=True)
        if not 0.0 < self.top_p <= 1.0:
            fail("sampling.top_p", self.top_p, "must lie in (0, 1]")
        if self.truncate_token_id < -1:
            fail("sampling.truncate_token_id", self.truncate_token_id, "must be a token id "
                 "or -1 (no truncation token)")


@dataclasses.dataclass(frozen=True)
class RewardSettings:
    """The preference pairs of reward modelling and DPO (``jaxrlhf.pairs``) and the
    Bradley–Terry loss options. Without ``data.source`` the pairs are built on the task:
    ``samples_per_prompt`` samples of the SFT policy per prompt at ``sample_temperature``
    (the pair recipe's own temperature: DPO trains on these and is evaluated at
    ``sampling.temperature``), ``pairs_per_prompt`` of their pairs (0: all), labelled by the
    gold reward (``label_mode``: ``bradley_terry`` at ``label_temperature`` or ``max``,
    which drops exact ties). ``num_reference`` responses fix the score normalisation (PPO detail 9)."""
    num_train_pairs: int = 2048
    num_eval_pairs: int = 512
    num_reference: int = 512
    max_prompt_tokens: int = 8
    max_response_tokens: int = 24
    # The pair recipe (Rafailov et al. 2023, §6.1: 4 samples, all 6 pairs, label_mode max):
    # responses per prompt, and the pairs of them compared (0: every one, K(K-1)/2).
    samples_per_prompt: int = 2
    pairs_per_prompt: int = 0
    label_mode: str = "bradley_terry"
    label_temperature: float = 0.1     # on the gold reward's own scale
    sample_temperature: float = 1.0
    use_margin: bool = False
    center_coef: float = 0.0

    def __post_init__(self):
        if self.label_mode not in LABEL_MODES:
            fail("reward.label_mode", self.label_mode, f"must be one of {LABEL_MODES}")
        positive(self, "reward", ("num_train_pairs", "num_eval_pairs", "num_reference",
                                   "max_prompt_tokens", "max_response_tokens",
                                   "label_temperature", "sample_temperature"))
        positive(self, "reward", ("center_coef", "pairs_per_prompt"), allow_zero=True)
        if self.samples_per_prompt < 2:
            fail("reward.samples_per_prompt", self.samples_per_prompt, "must be at least 2 "
                 "(a pair needs two responses to one prompt)")
        most = self.samples_per_prompt * (self.samples_per_prompt - 1) // 2
        if self.pairs_per_prompt > most:
            fail("reward.pairs_per_prompt", self.pairs_per_prompt, f"exceeds the {most} pairs "
                 f"of reward.samples_per_prompt={self.samples_per_prompt} responses")

    @property
    def pair_length(self) -> int:
        """Tokens of one scored row: prompt, response and the EOS."""
        return self.max_prompt_tokens + self.max_response_tokens + 1


@dataclasses.dataclass(frozen=True)
class DPOSettings:
    """A loss of the DPO family (``jaxrlhf.losses.PREFERENCE_LOSSES``) and its options:
    "dpo" (Rafailov et al. 2023), "cdpo" (label-smoothed), "ipo" (Azar et al. 2023; beta is
    its tau), "simpo" (Meng et al. 2024, reference-free, target margin ``simpo_gamma``),
    "orpo" (Hong et al. 2024, reference-free; ``beta`` is its lambda, as in TRL); or a loss
    of unpaired examples (``jaxrlhf.losses.UNPAIRED_LOSSES``): "kto" (Ethayarajh et al.
    2024; ``beta`` is its beta, ``kto_lambda_d`` / ``kto_lambda_u`` weigh desirable and
    undesirable examples). KTO's data (``jaxrlhf.pairs.prepare_unpaired``): the
    ``{prompt, completion, label}`` rows of ``data.source`` (or its preference pairs, chosen
    desirable and rejected undesirable), or on the task the SFT samples of the pair recipe
    (``reward.*``) each desirable when its gold reward exceeds ``kto_threshold``: "median"
    (the median gold of the training samples, so about half are desirable) or a number."""
    loss: str = "dpo"
    beta: float = 0.1
    label_smoothing: float = 0.0   # cDPO only: the assumed label-flip rate
    simpo_gamma: float = 0.5       # SimPO only: the target margin
    kto_lambda_d: float = 1.0      # KTO only: the weight of desirable examples
    kto_lambda_u: float = 1.0      # KTO only: the weight of undesirable examples
    kto_threshold: str = "median"  # KTO on the task: the gold a desirable sample exceeds

    def __post_init__(self):
        if self.loss not in (*PREFERENCE_LOSSES, *UNPAIRED_LOSSES):
            fail("dpo.loss", self.loss,
                 f"must be one of {(*PREFERENCE_LOSSES, *UNPAIRED_LOSSES)}")
        positive(self, "dpo", ("beta",))
        positive(self, "dpo", ("simpo_gamma", "kto_lambda_d", "kto_lambda_u"), allow_zero=True)
        if self.kto_lambda_d == self.kto_lambda_u == 0.0:
            fail("dpo.kto_lambda_d", self.kto_lambda_d, "and dpo.kto_lambda_u are both 0: "
                 "KTO would weigh every example by 0")
        if self.kto_threshold != "median":
            try:
                finite = math.isfinite(float(self.kto_threshold))
            except ValueError:
                finite = False
            if not finite:
                fail("dpo.kto_threshold", self.kto_threshold, "must be 'median' or a number "
                     "(the gold reward a desirable sample exceeds)")
        if not (0.0 < self.label_smoothing < 0.5 if self.loss == "cdpo"
                else self.label_smoothing == 0.0):
            fail("dpo.label_smoothing", self.label_smoothing,
                 "must lie in (0, 0.5) for dpo.loss='cdpo' and be 0 for the other losses")

    @property
    def unpaired(self) -> bool:
        """Whether the loss learns from unpaired examples (KTO) rather than pairs."""
        return self.loss in UNPAIRED_LOSSES

    @property
    def threshold(self) -> float | None:
        """``kto_threshold`` as a number, or None for the median of the training golds."""
        return None if self.kto_threshold == "median" else float(self.kto_threshold)


@dataclasses.dataclass(frozen=True)
class BestOfNSettings:
    """``n`` samples (drawn as ``sampling`` says) for each of ``num_prompts`` task prompts
    (``split``: the held-out ``eval`` prompts or PPO's ``train`` prompts), scored by the
    reward model in ``reward_init``; ``batch_size`` samples at a time."""
    n: int = 16
    num_prompts: int = 128
    split: str = "eval"
    batch_size: int = 512

    def __post_init__(self):
        positive(self, "bon", ("n", "num_prompts", "batch_size"))
        if self.split not in BON_SPLITS:
            fail("bon.split", self.split, f"must be one of {BON_SPLITS}")


@dataclasses.dataclass(frozen=True)
class PretrainSettings:
    """Causal-LM pretraining on raw text (``jaxrlhf.trainers.pretrain``): documents of the
    ``text_field`` of ``data.source`` rows (or ``.txt`` files) packed into rows of
    ``data.max_len`` tokens; ``cross_document`` False blocks attention across the documents
    of a row (a segment mask); ``clean_html_breaks`` replaces ``<br />`` tags by spaces (the
    IMDb reviews' line breaks, ``jaxrlhf.data.imdb.clean_review``)."""
    text_field: str = "text"
    cross_document: bool = True
    clean_html_breaks: bool = False

    def __post_init__(self):
        if not self.text_field:
            fail("pretrain.text_field", self.text_field, "must name the rows' text field")


@dataclasses.dataclass(frozen=True)
class LoRASettings:
    """Adapters (Hu et al. 2021; ``jaxrlhf.models.lora``) of ``rank`` (0: off, every
    parameter trains) on the linear layers whose names fully match the regular expression
    ``targets`` (q, k, v, o, gate, up, down, lm_head), scaled by alpha / rank, over a frozen
    base kept in ``base_dtype``; a scalar model's head trains too."""
    rank: int = 0
    alpha: float = 16.0
    targets: str = "q|k|v|o|gate|up|down"
    base_dtype: str = "float32"

    def __post_init__(self):
        positive(self, "lora", ("rank",), allow_zero=True)
        positive(self, "lora", ("alpha",))
        if self.base_dtype not in DTYPES:
            fail("lora.base_dtype", self.base_dtype, f"must be one of {DTYPES}")
        try:
            re.compile(self.targets)
        except re.error as e:
            fail("lora.targets", self.targets, f"is not a regular expression: {e}")

    @property
    def config(self) -> LoRAConfig | None:
        """The model-side adapter spec, or None when LoRA is off."""
        return LoRAConfig(self.rank, self.alpha, self.targets) if self.rank else None


@dataclasses.dataclass(frozen=True)
class LoggingSettings:
    """The experiment trackers beside ``metrics.jsonl`` (``jaxrlhf.trackers``), each off
    until named: Weights & Biases with ``wandb_project`` (in ``wandb_entity``, "": the
    user's default; run name ``wandb_run_name``, "": W&B's; ``wandb_tags`` comma-separated),
    MLflow with ``mlflow_uri`` (``file:DIR``, ``http://HOST:PORT``, ...; experiment
    ``mlflow_experiment``, "": MLflow's ``Default``)."""
    wandb_project: str = ""
    wandb_entity: str = ""
    wandb_run_name: str = ""
    wandb_tags: str = ""
    mlflow_uri: str = ""
    mlflow_experiment: str = ""

    def __post_init__(self):
        if any(c in self.wandb_project for c in WANDB_PROJECT_FORBIDDEN):
            fail("logging.wandb_project", self.wandb_project, f"must not contain any of "
                 f"{WANDB_PROJECT_FORBIDDEN!r} (an entity goes in logging.wandb_entity)")
        for name in ("wandb_entity", "wandb_run_name", "wandb_tags"):
            if getattr(self, name) and not self.wandb_project:
                fail(f"logging.{name}", getattr(self, name), "has no effect without "
                     "logging.wandb_project: set that too")
        if self.mlflow_experiment and not self.mlflow_uri:
            fail("logging.mlflow_experiment", self.mlflow_experiment, "has no effect without "
                 "logging.mlflow_uri: set that too (file:DIR or the tracking server's URL)")
        if not all(0 < len(tag) <= WANDB_TAG_MAX for tag in self.tags):
            fail("logging.wandb_tags", self.wandb_tags, f"must be comma-separated tags of 1 "
                 f"to {WANDB_TAG_MAX} characters each")

    @property
    def tags(self) -> tuple[str, ...]:
        """``wandb_tags`` as a tuple (empty when unset)."""
        return tuple(tag.strip() for tag in self.wandb_tags.split(",")) if self.wandb_tags else ()
