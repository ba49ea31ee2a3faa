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

from ..teacher import prompts as teacher
from ..teacher.scoring import TeacherPass
from . import contrast
from .base import config_error
from .blend import BlendedDistillation

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


class SDPO(BlendedDistillation):
    """The self-teacher shown a successful peer rollout (see the module docstring)."""

    name = "sdpo"
    default_teacher_mode = "ema"  # as SDPO and TRL's SDPOTrainer

    @classmethod
    def check_config(cls, args) -> None:
        if not 0.0 <= args.sdpo_lambda <= 1.0:
            raise config_error("sdpo_lambda", f"must be in [0, 1], got {args.sdpo_lambda}")
        if args.sdpo_feedback_column is not None and not str(args.sdpo_feedback_column).strip():
            raise config_error("sdpo_feedback_column", "must name a dataset column or be None")
        if args.sdpo_template is not None:
            names = set(teacher.template_fields(args.sdpo_template))
            if not {"prompt", "demonstration"} <= names or not names <= {"prompt", "demonstration", "feedback"}:
                raise config_error("sdpo_template", "needs {prompt} and {demonstration}, and may use only "
                                                    f"{{feedback}} besides; got fields {sorted(names)}")

    @classmethod
    def privileged_fields(cls, args) -> list[str]:
        return []  # a peer's rollout, not a dataset column (the `solution` fallback is used when present)

    @classmethod
    def divergence_only(cls, args) -> str | None:
        if args.distill_divergence == "sampled_token" or args.sdpo_lambda != 0.0:
            return None
        return f"algorithm={args.algorithm!r} with sdpo_lambda=0"

    def loss_weights(self) -> tuple[float, float]:
        """(policy, distillation) weights: `(lambda, 1 - lambda)`."""
        return float(self.args.sdpo_lambda), 1.0 - float(self.args.sdpo_lambda)

    def rows_to_score(self, teacher_pass: TeacherPass, output: Mapping[str, Any]) -> torch.Tensor:
        return output["teacher_rows"]  # rows with a demonstration

    def teacher_prompts(self, teacher_pass: TeacherPass, rows: list[dict[str, Any]], output: dict[str, Any]
                        ) -> tuple[torch.Tensor, torch.Tensor]:
        """Left-padded SDPO teacher prompts for the local rollouts; sets `output["teacher_rows"]` (B,).

        Rows without a teacher keep their plain prompt (never scored: `teacher_rows` is 0 there).
        """
        args = self.args
        all_texts = teacher_pass.gather(teacher_pass.completion_texts(output))
        rewards = teacher_pass.rewards()
        first, group_size = teacher_pass.first_row(len(rows)), teacher_pass.group_size
        contexts = plan_contexts(rows, first, rewards, all_texts, group_size, args.sdpo_success_threshold,
                                 args.sdpo_feedback_column)
        referenced = [i for i, ctx in enumerate(contexts) if ctx.source == "reference"]
        if referenced:  # a reference solution is privileged: it must not be in the student's prompt
            student = teacher_pass.student_prompts(output)
            teacher.assert_student_blind([student[i] for i in referenced], [rows[i] for i in referenced],
                                         "{prompt}{solution}")
        prompts, fit_rows = _render(rows, contexts, args.sdpo_template)
        ids, mask = teacher_pass.encode(prompts, output, fit_rows, fields=("demonstration",),
                                        template=args.sdpo_template or SDPO_TEMPLATE)
        output["teacher_rows"] = torch.tensor([ctx.source is not None for ctx in contexts], dtype=torch.float32,
                                              device=output["completion_ids"].device)
        self._contexts = (contexts, first, group_size)  # for the contrast's wrong demonstrations
        _log_sources(teacher_pass, contexts, rewards, group_size, args.sdpo_success_threshold)
        return ids, mask

    def wrong_prompts(self, teacher_pass: TeacherPass, rows: list[dict[str, Any]], output: dict[str, Any]):
        """Contrast: each row's re-prompt with another group's demonstration (a different answer), or None."""
        contexts, first, group_size = self._contexts
        return _wrong_prompts(rows, contexts, first, group_size, self.args.sdpo_template)

    def wrong_prompt_fields(self) -> tuple[tuple[str, ...], str]:
        return ("demonstration",), self.args.sdpo_template or SDPO_TEMPLATE


def _render(rows: Sequence[Mapping[str, Any]], contexts: Sequence[TeacherContext], custom_template: str | None):
    """Teacher prompts, and the mappings they were rendered from: the row (its images) with the template fields."""
    prompts, fit_rows = [], []
    template = custom_template or SDPO_TEMPLATE
    for row, ctx in zip(rows, contexts, strict=True):
        fields = {"prompt": row["prompt"], **ctx.fields(custom_template is not None)}
        prompts.append(teacher.teacher_prompt(row["prompt"], fields, template) if ctx.source else row["prompt"])
        fit_rows.append({**row, **fields})
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


def _log_sources(teacher_pass: TeacherPass, contexts: Sequence[TeacherContext], rewards: torch.Tensor,
                 group_size: int, threshold: float) -> None:
    n = max(len(contexts), 1)
    grouped = rewards.view(-1, group_size) >= threshold
    values = {
        "sdpo/success_group_frac": grouped.any(dim=1).float().mean().item(),
        "sdpo/peer_demo_frac": sum(c.source == "peer" for c in contexts) / n,
        "sdpo/reference_fallback_frac": sum(c.source == "reference" for c in contexts) / n,
        "sdpo/feedback_frac": sum(bool(c.feedback) for c in contexts) / n,
        "sdpo/no_teacher_frac": sum(c.source is None for c in contexts) / n,
    }
    for name, value in values.items():
        teacher_pass.log_mean(name, torch.tensor(value))


__all__ = ["DEMONSTRATION_TEMPLATE", "FEEDBACK_TEMPLATE", "SDPO", "SDPO_TEMPLATE", "TeacherContext",
           "choose_demonstrations", "plan_contexts"]
