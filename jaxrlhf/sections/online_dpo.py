"""The ``online_dpo`` section: online (iterative) DPO's rounds of on-policy pairs."""
from __future__ import annotations

import dataclasses

from jaxrlhf.checks import fail, positive
from jaxrlhf.data.preference import LABEL_MODES
from jaxrlhf.sections.ppo import REWARD_SOURCES


@dataclasses.dataclass(frozen=True)
class OnlineDPOSettings:
    """Online DPO (Guo et al. 2024; Xu et al. 2023): ``train.steps`` rounds, each sampling
    ``samples_per_prompt`` (K) responses to each of ``prompts_per_round`` task prompts (drawn
    from a pool of ``num_prompts``) from the *current* policy at ``temperature`` (1.0: the
    policy the DPO loss models; ``sampling.top_k`` / ``top_p`` / ``response_length`` as
    PPO samples), scoring them by the reward model or the task's gold reward
    (``reward_source``), pairing each prompt's best and worst response, labelled by
    ``label_mode`` (``max``: the best is chosen, all-K ties dropped; ``bradley_terry``: a
    draw at ``label_temperature`` on the reward's scale), and taking ``steps_per_round``
    DPO steps (``dpo.*``, batches of ``train.batch_size`` pairs) on them."""
    samples_per_prompt: int = 4
    prompts_per_round: int = 64
    steps_per_round: int = 4
    num_prompts: int = 4096
    temperature: float = 1.0
    reward_source: str = "model"   # "model": the reward model; "gold": the task's gold reward
    label_mode: str = "max"
    label_temperature: float = 0.1

    def __post_init__(self):
        if self.reward_source not in REWARD_SOURCES:
            fail("online_dpo.reward_source", self.reward_source,
                 f"must be one of {REWARD_SOURCES}")
        if self.label_mode not in LABEL_MODES:
            fail("online_dpo.label_mode", self.label_mode, f"must be one of {LABEL_MODES}")
        positive(self, "online_dpo", ("prompts_per_round", "steps_per_round", "num_prompts",
                                       "temperature", "label_temperature"))
        if self.samples_per_prompt < 2:
            fail("online_dpo.samples_per_prompt", self.samples_per_prompt,
                 "must be at least 2 (a pair needs two responses to one prompt)")
        if self.prompts_per_round > self.num_prompts:
            fail("online_dpo.prompts_per_round", self.prompts_per_round,
                 f"exceeds the pool of online_dpo.num_prompts={self.num_prompts} prompts")
