"""SDPO: self-distillation from the group's own successes (arXiv 2601.20802; TRL `trl/experimental/sdpo`).

The self-teacher is the same model (EMA teacher by default) re-prompted with the task plus a *successful
rollout of another member of the same group* (never the row's own completion) and, when `sdpo_feedback_column`
names a dataset column with text in it, that feedback (e.g. an error message). It scores the student's own
rollout; the student distils the teacher's next-token distribution: full vocabulary (`distill_divergence`
forward/reverse KL or JSD, optionally on the student's top-K, `distill_top_k`) or the sampled-token signal
`q_t - s_t`. The GRPO advantage is blended in: `A = lambda * A_GRPO + (1 - lambda) * A_SDPO`
(`sdpo_lambda`; for the full-vocabulary forms the two losses are blended with the same weights).

Which demonstration a row gets (`plan_contexts`):
1. the first other member of its group whose reward is >= `sdpo_success_threshold` (a peer success);
2. else, if the row has a non-empty `solution` column, that reference solution in the same slot;
3. else, if it has feedback, the feedback alone;
4. else no teacher: the row carries only the GRPO term `lambda * A_GRPO` (nothing when lambda = 0).

Same as TRL's SDPOTrainer: the re-prompt texts (`reprompt_template`, `solution_template`,
`feedback_template` defaults), the first successful peer as the demonstration (`dont_reprompt_on_self_success`),
success as reward >= 1.0, an EMA teacher at rate 0.05 (`teacher_ema_rate`), pure distillation by default
(TRL `distillation_weight=1.0` is our `sdpo_lambda=0`), sampled-token, full-logit and top-K modes.
Where ours differs, and why:
- Blend: TRL mixes the *losses* `(1 - w) * policy + w * distill`; for the sampled-token form we mix the
  *advantages* fed to one clipped surrogate, as the SDPO paper writes it and as the issue asks. Both give the
  same on-policy gradient; ours keeps one PPO clip for both terms instead of TRL's separate IS-ratio clip
  (`distillation_is_clip=2.0`), which only matters when a batch is reused (`num_iterations > 1`).
- No-success groups fall back to the row's reference solution when the dataset has one (TRL: no teacher).
  Our datasets usually carry a worked solution; not using it would waste the group.
- Divergences: ours are `distill_divergence` (forward KL = TRL alpha 0, reverse KL = alpha 1, JSD(beta));
  TRL's sampled-token default is reverse KL, which is our `distill_divergence="sampled_token"` (the
  benchmarks use that). Top-K renormalises over the support (TRL's default, no tail bucket).
- Aggregation: the distillation term is a token mean over teacher rows (like our OPSD), not TRL's
  per-sequence mean; the policy term follows TRL's `loss_type` as for every algorithm here.
- Truncation: `teacher_max_prompt_length` cuts the demonstration's end, never the task prompt (TRL keeps
  the last `max_reprompt_len` tokens of the whole re-prompt).
- `sdpo_template` replaces the re-prompt wording (TRL has three templates; ours is one with `{prompt}`,
  `{demonstration}`, `{feedback}` as raw texts), e.g. to match the wording a model was tuned to read
  references in.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from .. import teacher
from . import contrast
from .common import encode_prompts

# TRL SDPOConfig's defaults (reprompt_template, solution_template, feedback_template), renamed fields.
SDPO_TEMPLATE = "{prompt}{demonstration}{feedback}\n\nCorrectly solve the original question.\n"
DEMONSTRATION_TEMPLATE = "\nCorrect solution:\n\n{text}\n\n"
FEEDBACK_TEMPLATE = "\nThe following is feedback from your unsuccessful earlier attempt:\n\n{text}\n\n"
SOURCES = ("peer", "reference", "feedback")


@dataclass(frozen=True)
class TeacherContext:
    """What one rollout's SDPO teacher is shown: a demonstration and/or feedback, and where it came from."""

    demonstration: str = ""  # the raw demonstration text ("" if none)
    feedback: str = ""
    source: str | None = None  # "peer", "reference", "feedback" or None (no teacher for this row)
    peer: int | None = None  # batch index of the peer rollout used as the demonstration

    def fields(self, custom_template: bool = False) -> dict[str, str]:
        """Template fields: TRL's demonstration and feedback blocks (raw texts for a custom `sdpo_template`)."""
        if custom_template:
            return {"demonstration": self.demonstration, "feedback": self.feedback}
        return {"demonstration": DEMONSTRATION_TEMPLATE.format(text=self.demonstration) if self.demonstration else "",
                "feedback": FEEDBACK_TEMPLATE.format(text=self.feedback) if self.feedback else ""}


def loss_weights(args) -> tuple[float, float]:
    """(policy, distillation) weights: `(lambda, 1 - lambda)`."""
    return float(args.sdpo_lambda), 1.0 - float(args.sdpo_lambda)


def choose_demonstrations(rewards: torch.Tensor, group_size: int, threshold: float) -> list[int | None]:
    """For each rollout i, the first *other* member j of i's group with `rewards[j] >= threshold`, else None.

    Args:
        rewards: (N,) rewards of the whole generation batch, groups of `group_size` contiguous.
    Returns:
        N indices into the batch (never i itself) or None where no peer of i succeeded.
    """
    if rewards.dim() != 1 or rewards.numel() % group_size != 0:
        raise ValueError(f"rewards must be (N,) with N a multiple of group_size={group_size}, got {tuple(rewards.shape)}")
    success = (rewards >= threshold).tolist()  # NaN (unscorable) is never a success
    chosen: list[int | None] = []
    for i in range(rewards.numel()):
        start = (i // group_size) * group_size
        chosen.append(next((j for j in range(start, start + group_size) if j != i and success[j]), None))
    return chosen


def plan_contexts(rows: Sequence[Mapping[str, Any]], first_index: int, rewards: torch.Tensor,
                  completions: Sequence[str], group_size: int, threshold: float,
                  feedback_column: str | None = None) -> list[TeacherContext]:
    """The teacher context of each local row (see the module docstring for the order of fallbacks).

    Args:
        rows: the local dataset rows, one per rollout (row k is rollout `first_index + k` of the batch).
        rewards: (N,) rewards of the whole batch; completions: its N completion texts.
    """
    demonstrations = choose_demonstrations(rewards, group_size, threshold)
    contexts = []
    for k, row in enumerate(rows):
        feedback = str(row.get(feedback_column) or "").strip() if feedback_column else ""
        peer = demonstrations[first_index + k]
        solution = str(row.get("solution") or "").strip()
        if peer is not None:
            contexts.append(TeacherContext(completions[peer], feedback, "peer", peer))
        elif solution:
            contexts.append(TeacherContext(solution, feedback, "reference"))
        elif feedback:
            contexts.append(TeacherContext("", feedback, "feedback"))
        else:
            contexts.append(TeacherContext())
    return contexts


def teacher_prompt_tensors(trainer, inputs: list[dict[str, Any]], output: dict[str, Any]
                           ) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-padded SDPO teacher prompts for the local rollouts; sets `output["teacher_rows"]` (B,).

    Rows without a teacher keep their plain prompt (never scored: `teacher_rows` is 0 there).
    """
    from accelerate.utils import gather_object

    args = trainer.args
    texts = trainer.processing_class.batch_decode(
        [ids[mask.bool()] for ids, mask in zip(output["completion_ids"], output["completion_mask"], strict=True)],
        skip_special_tokens=True)
    all_texts = gather_object(texts)
    rewards = trainer._last_rewards.detach().float().cpu()
    first = trainer.accelerator.process_index * len(inputs)
    group_size = trainer.num_generations if trainer.model.training else trainer.num_generations_eval
    contexts = plan_contexts(inputs, first, rewards, all_texts, group_size, args.sdpo_success_threshold,
                             args.sdpo_feedback_column)
    referenced = [(i, row) for i, (row, ctx) in enumerate(zip(inputs, contexts, strict=True))
                  if ctx.source == "reference"]
    if referenced:  # a reference solution is privileged: it must not be in the student's prompt
        student = [trainer.processing_class.decode(output["prompt_ids"][i][output["prompt_mask"][i].bool()])
                   for i, _ in referenced]
        teacher.assert_student_blind(student, [row for _, row in referenced], "{prompt}{solution}")

    template = args.sdpo_template or SDPO_TEMPLATE
    prompts, fit_rows = _render(inputs, contexts, args.sdpo_template)
    ids, mask = encode_prompts(trainer, prompts, fit_rows, fields=("demonstration",), template=template)
    device = output["completion_ids"].device
    output["teacher_rows"] = torch.tensor([ctx.source is not None for ctx in contexts], dtype=torch.float32,
                                          device=device)
    if args.teacher_contrast == "wrong_reference":
        output[contrast.WRONG_PROMPTS_KEY] = _wrong_prompts(inputs, contexts, first, group_size, args.sdpo_template)
    _log_sources(trainer, contexts, rewards, group_size)
    return ids, mask


def _render(rows: Sequence[Mapping[str, Any]], contexts: Sequence[TeacherContext], custom_template: str | None):
    prompts, fit_rows = [], []
    template = custom_template or SDPO_TEMPLATE
    for row, ctx in zip(rows, contexts, strict=True):
        fields = {"prompt": row["prompt"], **ctx.fields(custom_template is not None)}
        prompts.append(teacher.teacher_prompt(row["prompt"], fields, template) if ctx.source else row["prompt"])
        fit_rows.append(fields)
    return prompts, fit_rows


def _wrong_prompts(rows, contexts: Sequence[TeacherContext], first_index: int, group_size: int,
                   custom_template: str | None):
    """Contrast: each row's re-prompt with another group's demonstration (a different answer), or None."""
    has_answer = all("answer" in row for row in rows)
    keys = [None if not ctx.demonstration else
            (str(row["answer"]).strip() if has_answer else ctx.demonstration)
            for row, ctx in zip(rows, contexts, strict=True)]
    partners = contrast.wrong_reference_indices(keys, group_size, first_index)
    wrong = [None if j is None else TeacherContext(contexts[j].demonstration, ctx.feedback, ctx.source)
             for ctx, j in zip(contexts, partners, strict=True)]
    prompts, fit_rows = _render(rows, [w or TeacherContext() for w in wrong], custom_template)
    return [(p, r) if w is not None else None for p, r, w in zip(prompts, fit_rows, wrong, strict=True)]


def _log_sources(trainer, contexts: Sequence[TeacherContext], rewards: torch.Tensor, group_size: int) -> None:
    n = max(len(contexts), 1)
    grouped = rewards.view(-1, group_size) >= trainer.args.sdpo_success_threshold
    values = {
        "sdpo/success_group_frac": grouped.any(dim=1).float().mean().item(),
        "sdpo/peer_demo_frac": sum(c.source == "peer" for c in contexts) / n,
        "sdpo/reference_fallback_frac": sum(c.source == "reference" for c in contexts) / n,
        "sdpo/feedback_frac": sum(bool(c.feedback) for c in contexts) / n,
        "sdpo/no_teacher_frac": sum(c.source is None for c in contexts) / n,
    }
    for name, value in values.items():
        trainer._log_mean(name, torch.tensor(value, device=trainer.accelerator.device))
