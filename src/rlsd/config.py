"""`RLSDConfig`: TRL's `GRPOConfig` plus the fields of SPEC.md."""

from __future__ import annotations

from dataclasses import dataclass, field

from trl import GRPOConfig

from .algorithms import (BUILTIN_ALGORITHMS, CONTRAST_SUFFIX, algorithm_variant, contrast_algorithms, get_algorithm,
                         validate_algorithm_config)
from .algorithms.contrast import TEACHER_CONTRASTS
from .algorithms.rlsd import LAMBDA_SCHEDULES
from .teacher.prompts import DEFAULT_LEAKAGE_PATTERNS, default_template, template_fields

# Built-in algorithms (a user's own class is named by 'file.py:Class' or 'module:Class', see rlsd.algorithms).
ALGORITHMS = tuple(cls.name for cls in BUILTIN_ALGORITHMS)
TEACHER_MODES = ("live", "ema", "base", "snapshot")
DIVERGENCES = ("forward_kl", "reverse_kl", "jsd", "sampled_token")
# Algorithms whose teacher is the model itself shown a reference: the ones a wrong reference can be contrasted with.
CONTRAST_ALGORITHMS = contrast_algorithms()


@dataclass
class RLSDConfig(GRPOConfig):
    """Configuration for `RLSDTrainer`: every `GRPOConfig` field, plus:

    algorithm: "rlsd" (reward direction x teacher magnitude), "grpo" (plain TRL),
        "opsd" (self-distillation from the privileged teacher), "opd"
        (distillation from an external `teacher_model`), "sdpo" (self-distillation
        from a successful peer rollout, `rlsd.algorithms.sdpo`), "grpo+opsd" (GRPO
        loss + `opsd_coef` x the OPSD divergence, `rlsd.algorithms.grpo_opsd`), "rlcsd"
        (RLCSD, arXiv 2606.11709: right vs wrong peer hints, `rlsd.algorithms.rlcsd`), any
        name given to `rlsd.register_algorithm`, or your own class as
        "path/to/my_method.py:MyMethod" / "package.module:MyMethod" (docs/new-method.md).
    rlsd_lambda, rlsd_lambda_schedule, rlsd_lambda_decay_steps, rlsd_eps_w: SPEC.md's
        lambda (teacher weight), its schedule and the token-weight clip range;
        rlsd_lambda_warmup_steps, rlsd_negative_only, rlsd_thought_only (+ rlsd_thought_markers):
        the RLSD authors' and ms-swift's options (`rlsd.algorithms.rlsd`).
    teacher_mode: "live" current weights, "ema" exponential moving average,
        "base" initial weights (adapters disabled under LoRA), "snapshot"
        refreshed every `teacher_snapshot_steps` optimizer steps. Default: "ema"
        for sdpo (as SDPO and TRL's SDPOTrainer), "live" otherwise.
    teacher_contrast: "wrong_reference" scores each completion a second time under
        another row's reference and uses q_right - q_wrong as the teacher's evidence
        (`rlsd.algorithms.contrast`); "none" (default) is the paper's method.
    privileged_fields, teacher_template: which dataset columns form the
        privileged text and how (`{prompt}`, `{answer}`, `{solution}`, any column).
    """

    algorithm: str = field(
        default="rlsd", metadata={"help": f"One of {ALGORITHMS}, a registered name, or 'my_method.py:MyMethod'."})
    rlsd_lambda: float = field(default=1.0, metadata={"help": "Weight of the teacher magnitude, in [0, 1]."})
    rlsd_lambda_schedule: str = field(default="constant", metadata={"help": f"One of {LAMBDA_SCHEDULES}."})
    rlsd_lambda_decay_steps: int | None = field(
        default=None, metadata={"help": "Steps over which `linear_decay` reaches 0 (default: max_steps)."}
    )
    rlsd_eps_w: float = field(default=0.2, metadata={"help": "Clip range of the token weight, in (0, 1)."})
    rlsd_lambda_warmup_steps: int = field(
        default=0, metadata={"help": "lambda rises linearly from 0 over this many steps before its schedule (0: none)."})
    rlsd_negative_only: bool = field(
        default=False, metadata={"help": "Teacher weights only on wrong rollouts (A < 0); others keep GRPO's A."})
    rlsd_thought_only: bool = field(
        default=False,
        metadata={"help": "Teacher weights only inside the reasoning span (rlsd_thought_markers); GRPO's A elsewhere. "
                          "A completion without the span gets weights on every token (rlsd/thought_fallback_frac)."})
    rlsd_thought_markers: list[str] = field(
        default_factory=lambda: ["<think>", "</think>"],
        metadata={"help": "[start, end] of the reasoning span for rlsd_thought_only; start '' = the completion's "
                          "beginning, e.g. ['', 'Answer:'] for everything before the final-answer line."})
    teacher_mode: str | None = field(
        default=None, metadata={"help": f"One of {TEACHER_MODES}; default 'ema' for sdpo, else 'live'."})
    teacher_ema_rate: float = field(
        default=0.05, metadata={"help": "EMA teacher: teacher <- (1 - rate) * teacher + rate * student each step."}
    )
    teacher_snapshot_steps: int = field(default=10, metadata={"help": "Snapshot teacher refresh period (steps)."})
    privileged_fields: list[str] = field(
        default_factory=lambda: ["answer"],
        metadata={"help": "Dataset columns that form the privileged text, e.g. ['answer'] or ['answer', 'solution']."},
    )
    teacher_template: str | None = field(
        default=None,
        metadata={"help": "Teacher prompt template with {prompt} and the privileged fields; default per fields."},
    )
    teacher_max_prompt_length: int | None = field(
        default=None,
        metadata={"help": "Token limit for teacher prompts; longer ones lose privileged text, never completion."},
    )
    teacher_share_prefix: bool = field(
        default=True,
        metadata={"help": "Read each distinct teacher prompt once and reuse its KV cache for its G completions "
                          "(falls back to one full pass per row where it cannot apply, see rlsd.teacher.shared_prefix)."},
    )
    distill_divergence: str = field(default="forward_kl", metadata={"help": f"OPSD/OPD signal: one of {DIVERGENCES}."})
    distill_jsd_beta: float = field(default=0.5, metadata={"help": "Mixture weight for distill_divergence='jsd'."})
    opsd_token_clip: float | None = field(default=None, metadata={"help": "Pointwise clip of each token's divergence."})
    distill_top_k: int | None = field(
        default=None,
        metadata={"help": "Full-vocabulary divergences on the student's top-K tokens only (renormalised); None: all."},
    )
    opsd_coef: float = field(
        default=0.1, metadata={"help": "grpo+opsd: weight of the OPSD divergence added to the GRPO loss (>= 0)."})
    sdpo_lambda: float = field(
        default=0.0,
        metadata={"help": "sdpo: A = lambda * A_GRPO + (1 - lambda) * A_SDPO, in [0, 1]; 0 is pure self-distillation."},
    )
    sdpo_success_threshold: float = field(
        default=1.0, metadata={"help": "sdpo: a rollout with reward >= this is a successful demonstration."})
    sdpo_feedback_column: str | None = field(
        default=None, metadata={"help": "sdpo: dataset column with environment feedback (e.g. an error message)."})
    sdpo_template: str | None = field(
        default=None,
        metadata={"help": "sdpo: teacher prompt with {prompt}, {demonstration} and optionally {feedback} (raw texts); "
                          "default: TRL SDPOTrainer's re-prompt."},
    )
    rlcsd_tau: float = field(default=0.02, metadata={"help": "rlcsd: temperature of tanh(e / tau)."})
    rlcsd_beta: float = field(default=1.0, metadata={"help": "rlcsd: residual scale beta (>= 0)."})
    rlcsd_lambda: float = field(default=0.5, metadata={"help": "rlcsd: residual weight lambda, in [0, 1]."})
    rlcsd_delta: float = field(default=0.02, metadata={"help": "rlcsd: tokens with |residual| > delta are selected."})
    rlcsd_eta: float = field(default=1.0, metadata={"help": "rlcsd: weight of the selected tokens (>= 0)."})
    rlcsd_residual_clip_low: float = field(default=-2.0, metadata={"help": "rlcsd: lower clip of the residual."})
    rlcsd_residual_clip_high: float = field(default=2.0, metadata={"help": "rlcsd: upper clip of the residual."})
    rlcsd_k_max: int = field(default=4, metadata={"help": "rlcsd: most wrong hints per rollout (their mixture)."})
    rlcsd_hint_source: str = field(
        default="self_rollout",
        metadata={"help": "rlcsd: the right hint is a successful peer rollout ('self_rollout') or the row's "
                          "solution and answer ('reference')."})
    teacher_contrast: str = field(
        default="none", metadata={"help": f"One of {TEACHER_CONTRASTS}: contrast the teacher with a wrong reference."})
    teacher_model: str | None = field(default=None, metadata={"help": "OPD: external teacher (hub id or path)."})
    opd_teacher_sees_privileged: bool = field(
        default=False, metadata={"help": "OPD: show the external teacher the privileged text too."}
    )
    leakage_patterns: list[str] = field(
        default_factory=lambda: list(DEFAULT_LEAKAGE_PATTERNS),
        metadata={"help": "Regexes of teacher-only phrasing; a completion matching one counts as leaked."},
    )
    leakage_min_derivation_chars: int = field(
        default=0, metadata={"help": "If > 0, an answer stated with fewer other characters counts as leaked."}
    )
    accuracy_threshold: float = field(default=0.5, metadata={"help": "Reward above which a completion is correct."})

    def __post_init__(self):
        self._validate_rlsd_fields()
        if self.bf16 is None and not self.fp16 and not _bf16_available():
            self.bf16 = False  # TRL defaults to bf16, which a laptop CPU or an older GPU cannot run
        super().__post_init__()

    def _validate_rlsd_fields(self) -> None:
        def fail(name: str, message: str):
            raise ValueError(f"RLSDConfig.{name}: {message}")

        try:
            algorithm = get_algorithm(self.algorithm)
        except ValueError as err:
            message = str(err).removeprefix("RLSDConfig.algorithm: ")
            fail("algorithm", message)
        if self.teacher_mode is None:
            self.teacher_mode = algorithm.default_teacher_mode
        if self.teacher_mode not in TEACHER_MODES:
            fail("teacher_mode", f"must be one of {TEACHER_MODES}, got {self.teacher_mode!r}")
        if not 0.0 < self.teacher_ema_rate <= 1.0:
            fail("teacher_ema_rate", f"must be in (0, 1], got {self.teacher_ema_rate}")
        if self.teacher_snapshot_steps < 1:
            fail("teacher_snapshot_steps", f"must be >= 1, got {self.teacher_snapshot_steps}")
        if isinstance(self.privileged_fields, str):
            self.privileged_fields = [f.strip() for f in self.privileged_fields.split(",") if f.strip()]
        if not self.privileged_fields:
            fail("privileged_fields", "needs at least one column, e.g. ['answer']")
        if self.teacher_template is None:
            self.teacher_template = default_template(self.privileged_fields)
        names = template_fields(self.teacher_template)
        if "prompt" not in names:
            fail("teacher_template", "must contain the {prompt} placeholder")
        missing = [f for f in self.privileged_fields if f not in names]
        if missing:
            fail("teacher_template", f"does not use the privileged field(s) {missing}")
        if self.distill_divergence not in DIVERGENCES:
            fail("distill_divergence", f"must be one of {DIVERGENCES}, got {self.distill_divergence!r}")
        if not 0.0 < self.distill_jsd_beta < 1.0:
            fail("distill_jsd_beta", f"must be in (0, 1), got {self.distill_jsd_beta}")
        if self.opsd_token_clip is not None and self.opsd_token_clip <= 0:
            fail("opsd_token_clip", f"must be positive, got {self.opsd_token_clip}")
        if self.distill_top_k is not None and (isinstance(self.distill_top_k, bool) or self.distill_top_k < 1):
            fail("distill_top_k", f"must be a positive integer or None, got {self.distill_top_k!r}")
        if self.distill_top_k is not None and self.distill_divergence == "sampled_token":
            fail("distill_top_k", "has no effect with distill_divergence='sampled_token'; unset one of them")
        if self.teacher_max_prompt_length is not None and self.teacher_max_prompt_length < 1:
            fail("teacher_max_prompt_length", f"must be positive, got {self.teacher_max_prompt_length}")
        validate_algorithm_config(self)  # the algorithm's own fields and what it supports (e.g. teacher_contrast)
        _refuse_surrogate_options(self, fail)

    @property
    def trains_on_divergence_only(self) -> bool:
        """Whether the loss is the full-vocabulary distillation divergence alone (TRL's surrogate never runs):
        opsd/opd, or pure sdpo (sdpo_lambda=0), unless `distill_divergence="sampled_token"`."""
        return get_algorithm(self.algorithm).divergence_only(self) is not None

    @property
    def uses_privileged_teacher(self) -> bool:
        """Whether the teacher pass needs the privileged dataset columns."""
        return bool(self.privileged_columns)

    @property
    def privileged_columns(self) -> list[str]:
        """The dataset columns this algorithm's teacher pass reads (checked up front)."""
        return get_algorithm(self.algorithm).privileged_fields(self)


# GRPOConfig options that only TRL's surrogate loss reads: (is it set?, what it would have done).
SURROGATE_OPTIONS = {
    "beta": (lambda v: v not in (None, 0.0), "TRL adds its KL-to-reference term to that loss"),
    "loss_type": (lambda v: v not in (None, GRPOConfig.loss_type), "it selects how that loss is aggregated"),
    "importance_sampling_level": (lambda v: v not in (None, "token"), "it sets that loss's importance ratio"),
    "top_entropy_quantile": (lambda v: v is not None and v < 1.0, "it masks that loss's low-entropy tokens"),
    "entropy_coef": (lambda v: v not in (None, 0.0), "TRL adds its entropy bonus to that loss"),
    "use_adaptive_entropy": (bool, "TRL adds its entropy bonus to that loss"),
    "off_policy_mask_threshold": (lambda v: v is not None, "it masks sequences in that loss"),
    "delta": (lambda v: v is not None, "it clips that loss's ratio"),
}


def _refuse_surrogate_options(args, fail) -> None:
    """One clear error for a TRL loss option under an algorithm whose loss never runs TRL's surrogate."""
    which = get_algorithm(args.algorithm).divergence_only(args)
    if which is None:
        return
    for name, (is_set, effect) in SURROGATE_OPTIONS.items():
        value = getattr(args, name, None)
        if is_set(value):
            fail(name, f"{value!r} has no effect: {which} and distill_divergence={args.distill_divergence!r} "
                       f"train on the distillation divergence alone, not TRL's surrogate loss, and {effect}; unset it, "
                       f"or use distill_divergence='sampled_token' (the teacher signal as token advantages in TRL's "
                       f"loss, where every option applies)")


def _bf16_available() -> bool:
    import torch

    return torch.cuda.is_available() and torch.cuda.is_bf16_supported()


__all__ = ["ALGORITHMS", "CONTRAST_ALGORITHMS", "CONTRAST_SUFFIX", "DIVERGENCES", "LAMBDA_SCHEDULES", "RLSDConfig",
           "TEACHER_CONTRASTS", "TEACHER_MODES", "algorithm_variant"]
