"""RLCSD (arXiv 2606.11709), as its authors' code computes it (github THU-BPM/RLCSD: `src/self_distill_main.py`
`_compute_rlcsd_teacher_inputs`, `third_party/verl/.../core_algos.py` `compute_policy_loss_rlcsd`).

The hints are the group's own rollouts. For each rollout (the target):
- the *right* hint is another rollout of its group that succeeded (reward above `accuracy_threshold`), drawn at
  random, shown as a reference solution with its final answer (the extracted answer, else the row's `answer`);
  with `rlcsd_hint_source="reference"` it is the row's own `solution` and `answer` instead (the authors' `gt_cot`);
- the *wrong* hints are up to K = `rlcsd_k_max` failed rollouts of its group with an extractable final answer,
  never the target itself (a correct target may use any of them), drawn at random.
The same teacher scores the target under the right hint (q_right) and under each wrong one (q_wrong_k), and
`credit.rlcsd_token_advantages` turns the contrast with the wrong hints' mixture into a bounded residual added to
GRPO's A on the tokens where it is large enough, never flipping A's sign. It *adds to* GRPO's term (GRPO's A
everywhere else). A rollout whose group has no usable right or wrong hint is dropped from the update (A_t = 0),
as the authors drop it from the batch. Image rows: every hint prompt keeps the target row's own images (only the
text differs). Defaults are the authors' published configs (math and Knights-and-Knaves:
tau 0.02, beta 1, lambda 0.5, delta 0.02, eta 1, residual clip [-2, 2], K <= 4, a snapshot teacher refreshed
every 10 steps).

Where ours differs, and why:
- Aggregation: the authors average selected and unselected tokens' PPO losses separately
  (`mean_unselected + eta * mean_selected`); ours feeds one (B, T) advantage to TRL's surrogate, aggregated by
  `loss_type` like every method here, with `eta` weighting the selected tokens' advantages. The two agree when
  the selected share of tokens is the same in every micro-batch; ours keeps TRL's options working.
- Dropped rows stay in the batch with A_t = 0 (no gradient) rather than being removed, so TRL's normaliser
  still counts their tokens.
- Final answers: the authors take the last `\\boxed{}`; ours also reads an `<answer>` tag or an `Answer:` line
  (`rlsd.rewards._text.extract_final_answer` without the last-line fallback), as our tasks write answers that way.
- Success is `reward > accuracy_threshold` (theirs `reward > 0`, the same for 0/1 rewards).
- The teacher prompt is `RLCSD_TEMPLATE` over our chat template (their wording, without their `\\boxed{}`
  instruction, which depends on the task's answer format); the hints are drawn with a generator seeded by
  `seed` and the step (theirs: Python's global `random`), so a run is reproducible.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from ..credit import maths as credit
from ..rewards._text import extract_final_answer
from ..teacher import prompts as teacher
from ..teacher.scoring import TeacherPass
from .base import Algorithm, config_error

RLCSD_TEMPLATE = ("{prompt}\n\nHere is a reference solution to this problem:\n=== Reference Solution Begin ===\n"
                  "{solution}\nFinal answer: {answer}\n=== Reference Solution End ===\n\nAfter reading the "
                  "reference solution above, make sure you understand the reasoning behind each step.\n")
HINT_SOURCES = ("self_rollout", "reference")
HINT_FIELDS = ("solution", "answer")


def draw_hints(rewards: Sequence[float], answers: Sequence[str | None], group_size: int, threshold: float,
               k_max: int, rng: random.Random, targets: Sequence[int], reference_hint: bool = False
               ) -> list[tuple[int | None, list[int]] | None]:
    """The authors' hint draw for each target rollout index: (right hint index, wrong hint indices) or None.

    Args:
        rewards, answers: per rollout of the whole batch (groups of `group_size` contiguous); `answers[j]` is the
            final answer extracted from rollout j (None: none found, it cannot be a wrong hint).
        targets: the rollout indices to draw for (this process's rows).
        reference_hint: the right hint is the row's reference (returned as None), not a peer's success.
    Returns:
        Per target: None when its group has no usable right hint (no other success) or no wrong one, else
        (right index or None for the reference, 1..k_max wrong indices, the first drawn first).
    """
    draws: list[tuple[int | None, list[int]] | None] = []
    for i in targets:
        start = (i // group_size) * group_size
        group = range(start, start + group_size)
        positives = [j for j in group if rewards[j] > threshold]
        negatives = [j for j in group if not rewards[j] > threshold and answers[j] is not None]
        right_pool = [j for j in positives if j != i]
        wrong_pool = [j for j in negatives if j != i]
        if not wrong_pool or (not reference_hint and not right_pool):
            draws.append(None)
            continue
        right = None if reference_hint else rng.choice(right_pool)
        first = rng.choice(wrong_pool)
        rest = [j for j in wrong_pool if j != first]
        rng.shuffle(rest)
        draws.append((right, [first, *rest[: max(k_max - 1, 0)]]))
    return draws


class RLCSD(Algorithm):
    name = "rlcsd"
    default_teacher_mode = "snapshot"  # the authors' teacher_mode: snapshot, teacher_sync_interval 10

    @classmethod
    def check_config(cls, args) -> None:
        if not args.rlcsd_tau > 0:
            raise config_error("rlcsd_tau", f"must be > 0, got {args.rlcsd_tau}")
        for name in ("rlcsd_beta", "rlcsd_delta", "rlcsd_eta"):
            if not getattr(args, name) >= 0:
                raise config_error(name, f"must be >= 0, got {getattr(args, name)}")
        if not 0.0 <= args.rlcsd_lambda <= 1.0:
            raise config_error("rlcsd_lambda", f"must be in [0, 1], got {args.rlcsd_lambda}")
        if not args.rlcsd_residual_clip_low <= 0 <= args.rlcsd_residual_clip_high:
            raise config_error("rlcsd_residual_clip_low",
                               f"needs rlcsd_residual_clip_low <= 0 <= rlcsd_residual_clip_high, got "
                               f"{args.rlcsd_residual_clip_low} and {args.rlcsd_residual_clip_high}")
        if isinstance(args.rlcsd_k_max, bool) or args.rlcsd_k_max < 1:
            raise config_error("rlcsd_k_max", f"must be a positive integer, got {args.rlcsd_k_max!r}")
        if args.rlcsd_hint_source not in HINT_SOURCES:
            raise config_error("rlcsd_hint_source", f"must be one of {HINT_SOURCES}, got {args.rlcsd_hint_source!r}")

    @classmethod
    def privileged_fields(cls, args) -> list[str]:
        return ["solution", "answer"] if args.rlcsd_hint_source == "reference" else []

    def rows_to_score(self, teacher_pass: TeacherPass, output: Mapping[str, Any]) -> torch.Tensor:
        return output["rlcsd_rows"] * (output["advantages"] != 0)

    def score(self, teacher_pass: TeacherPass, rows: list[dict[str, Any]], output: dict[str, Any]) -> None:
        args = self.args
        output["sequence_advantages"] = output["advantages"]
        texts = teacher_pass.gather(teacher_pass.completion_texts(output))
        answers = [extract_final_answer(t, fallback_last_line=False) for t in texts]
        rewards = teacher_pass.rewards().tolist()
        first = teacher_pass.first_row(len(rows))
        rng = random.Random(f"{args.seed}:{teacher_pass.global_step}:{first}")
        reference = args.rlcsd_hint_source == "reference"
        draws = draw_hints(rewards, answers, teacher_pass.group_size, args.accuracy_threshold, args.rlcsd_k_max,
                           rng, range(first, first + len(rows)), reference_hint=reference)
        device = output["completion_ids"].device
        output["rlcsd_rows"] = torch.tensor([d is not None for d in draws], dtype=torch.float32, device=device)

        def hint(row, j):  # a rollout as a reference solution with its final answer
            if j is None:
                return {**row, "solution": row.get("solution") or "", "answer": row.get("answer") or ""}
            return {**row, "solution": texts[j], "answer": answers[j] or str(row.get("answer") or "")}

        def prompts_for(hint_rows):
            return [teacher.teacher_prompt(r["prompt"], r, RLCSD_TEMPLATE) for r in hint_rows]

        right_rows = [hint(row, d[0]) if d else hint(row, None) for row, d in zip(rows, draws, strict=True)]
        if reference:  # the row's own reference is privileged: it must not be in the student's prompt
            teacher.assert_student_blind(teacher_pass.student_prompts(output), right_rows, RLCSD_TEMPLATE)
        scored = self.rows_to_score(teacher_pass, output)
        ids, mask = teacher_pass.encode(prompts_for(right_rows), output, right_rows, fields=HINT_FIELDS,
                                        template=RLCSD_TEMPLATE)
        output["teacher_per_token_logps"] = teacher_pass.logps(ids, mask, output, rows=scored)
        k_max = args.rlcsd_k_max
        wrong = torch.zeros(len(rows), k_max, output["completion_ids"].size(1), device=device)
        valid = torch.zeros(len(rows), k_max, dtype=torch.bool, device=device)
        with teacher_pass.timed("contrast"):
            for k in range(k_max):
                slot = [d is not None and len(d[1]) > k for d in draws]
                if not any(slot):
                    break
                wrong_rows = [hint(row, d[1][k]) if has else right_rows[i]
                              for i, (row, d, has) in enumerate(zip(rows, draws, slot, strict=True))]
                ids, mask = teacher_pass.encode(prompts_for(wrong_rows), output, wrong_rows, fields=HINT_FIELDS,
                                                template=RLCSD_TEMPLATE, key="teacher_wrong")
                has = torch.tensor(slot, dtype=torch.bool, device=device)
                wrong[:, k] = teacher_pass.logps(ids, mask, output, rows=scored * has, key="teacher_wrong")
                valid[:, k] = has
        output["rlcsd_wrong_logps"], output["rlcsd_wrong_valid"] = wrong, valid
        teacher_pass.log_mean("rlcsd/valid_row_frac", output["rlcsd_rows"].mean())
        _log_hints(teacher_pass, draws)

    def token_advantages(self, teacher_pass: TeacherPass, inputs: Mapping[str, Any], old_logps: torch.Tensor
                         ) -> torch.Tensor:
        args = self.args
        mask = self.mask(inputs) * inputs["rlcsd_rows"].unsqueeze(1).to(inputs["completion_mask"].dtype)
        token_adv, stats = credit.rlcsd_token_advantages(
            inputs["sequence_advantages"], inputs["teacher_per_token_logps"], inputs["rlcsd_wrong_logps"],
            inputs["rlcsd_wrong_valid"], mask, tau=args.rlcsd_tau, beta=args.rlcsd_beta, lam=args.rlcsd_lambda,
            delta=args.rlcsd_delta, eta=args.rlcsd_eta, clip_low=args.rlcsd_residual_clip_low,
            clip_high=args.rlcsd_residual_clip_high)
        for name, value in stats.items():
            teacher_pass.log_mean(f"rlcsd/{name}", value)
        added = token_adv - inputs["sequence_advantages"].unsqueeze(1) * mask
        teacher_pass.log_kind_split(inputs, added, mask, "rlcsd/residual")  # agent runs: tool calls vs reasoning
        teacher_pass.record_credit(inputs, {"token_advantage": token_adv}, color="token_advantage")
        return token_adv


def _log_hints(teacher_pass: TeacherPass, draws) -> None:
    sizes = [len(d[1]) for d in draws if d is not None]
    teacher_pass.log_mean("rlcsd/wrong_hints_mean", torch.tensor(sum(sizes) / max(len(sizes), 1)))


__all__ = ["HINT_SOURCES", "RLCSD", "RLCSD_TEMPLATE", "draw_hints"]
