"""Credit assignment for RLSD and its baselines, in plain PyTorch.

Every function here is pure: tensors in, tensors out, no trainer state, no
gradient through anything that the spec calls stop-gradient. Shapes use
B = number of completions, T = completion length, V = vocabulary size.
See SPEC.md ("RLSD (the method)") for the definitions these implement.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

ADVANTAGE_EPS = 1e-4  # same epsilon as TRL's GRPOTrainer, so `grpo` here == TRL
MAX_LOG_WEIGHT = 20.0  # exp() argument bound: the clip range is far narrower anyway


def group_advantages(rewards: torch.Tensor, group_size: int, scale: str = "group") -> torch.Tensor:
    """GRPO sequence advantages.

    Args:
        rewards: (B,) rewards, B = num_groups * group_size, groups contiguous.
        group_size: completions per prompt (G).
        scale: "group" divides by the group's std (GRPO), "batch" by the
            batch std, "none" only centres on the group mean (Dr. GRPO).

    Returns:
        (B,) advantages `(R - mean_group(R)) / (std + 1e-4)` (std unbiased, as TRL).
    """
    if rewards.dim() != 1 or rewards.numel() % group_size != 0:
        raise ValueError(f"rewards must be (B,) with B a multiple of group_size={group_size}, got {tuple(rewards.shape)}")
    grouped = rewards.view(-1, group_size)
    centred = (grouped - grouped.mean(dim=1, keepdim=True)).view(-1)
    if scale == "none":
        return centred
    if scale == "group":
        std = grouped.std(dim=1, keepdim=True) if group_size > 1 else torch.zeros_like(grouped[:, :1])
        std = std.expand_as(grouped).reshape(-1)
    elif scale == "batch":
        std = rewards.std() if rewards.numel() > 1 else rewards.new_zeros(())
    else:
        raise ValueError(f"scale must be 'group', 'batch' or 'none', got {scale!r}")
    return centred / (std + ADVANTAGE_EPS)


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    mask = mask.to(values.dtype)
    return (values * mask).sum() / mask.sum().clamp(min=1.0)


def rlsd_token_advantages(
    advantages: torch.Tensor,
    teacher_logps: torch.Tensor,
    old_logps: torch.Tensor,
    mask: torch.Tensor,
    lam: float = 1.0,
    eps_w: float = 0.2,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """RLSD token advantages: the reward gives the direction, the teacher the magnitude.

    ```
    delta_t = stopgrad(q_t - s_old_t)
    w_t     = clip(exp(sign(A) * delta_t), 1 - eps_w, 1 + eps_w)
    A_t     = A * ((1 - lam) + lam * w_t)
    ```

    Args:
        advantages: (B,) sequence advantages A (e.g. from `group_advantages`).
        teacher_logps: (B, T) log-probs of the sampled tokens under the teacher
            context (prompt + privileged text), q_t.
        old_logps: (B, T) log-probs of the same tokens under the sampling
            policy, s_old_t.
        mask: (B, T) 1 for completion tokens that count, 0 for padding.
        lam: weight of the teacher magnitude, in [0, 1]; 0 gives GRPO exactly.
        eps_w: clip range of the token weight, in (0, 1).

    Returns:
        token_advantages: (B, T), zero where `mask` is 0. `sign(A_t) == sign(A)`
            and `|A_t|/|A|` lies in `[1 - lam*eps_w, 1 + lam*eps_w]`.
        stats: 0-dim tensors. `delta_mean`, `delta_std`, `weight_mean`,
            `clip_low_frac`, `clip_high_frac` over valid tokens with A != 0 (where
            the teacher acts; callers may skip the teacher pass elsewhere);
            `adv_abs_before`/`adv_abs_after`
            mean |A| and |A_t| over valid tokens; `sign_flips` count of valid
            tokens whose sign changed (must be 0); `num_tokens` (valid) and
            `num_acting_tokens` (valid with A != 0), to combine means across batches.
    """
    if not 0.0 <= lam <= 1.0:
        raise ValueError(f"lam must be in [0, 1], got {lam}")
    if not 0.0 < eps_w < 1.0:
        raise ValueError(f"eps_w must be in (0, 1), got {eps_w}")
    if teacher_logps.shape != old_logps.shape or teacher_logps.shape != mask.shape:
        raise ValueError(
            f"teacher_logps {tuple(teacher_logps.shape)}, old_logps {tuple(old_logps.shape)} and "
            f"mask {tuple(mask.shape)} must have the same (B, T) shape"
        )
    valid = mask.bool()
    seq_adv = advantages.detach().unsqueeze(1)  # (B, 1)
    delta = (teacher_logps.detach() - old_logps.detach()).float()
    # Padding may hold anything (even inf - inf); keep it out of every statistic.
    delta = torch.where(valid, delta, torch.zeros_like(delta))

    log_weight = (torch.sign(seq_adv).float() * delta).clamp(-MAX_LOG_WEIGHT, MAX_LOG_WEIGHT)
    raw_weight = torch.exp(log_weight)
    weight = raw_weight.clamp(1.0 - eps_w, 1.0 + eps_w)
    scale = (1.0 - lam) + lam * weight
    token_adv = (seq_adv * scale.to(seq_adv.dtype)) * valid.to(seq_adv.dtype)

    with torch.no_grad():
        acting = valid & (seq_adv != 0)
        delta_mean = masked_mean(delta, acting)
        delta_var = masked_mean((delta - delta_mean) ** 2, acting)
        stats = {
            "delta_mean": delta_mean,
            "delta_std": delta_var.sqrt(),
            "weight_mean": masked_mean(weight, acting),
            "clip_low_frac": masked_mean((raw_weight < 1.0 - eps_w).float(), acting),
            "clip_high_frac": masked_mean((raw_weight > 1.0 + eps_w).float(), acting),
            "adv_abs_before": masked_mean(seq_adv.abs().expand_as(delta).float(), valid),
            "adv_abs_after": masked_mean(token_adv.abs().float(), valid),
            "sign_flips": (valid & (torch.sign(token_adv) != torch.sign(seq_adv))).sum().float(),
            "num_tokens": valid.sum().float(),
            "num_acting_tokens": acting.sum().float(),
        }
    return token_adv, stats


def linear_decay_lambda(lam: float, step: int, decay_steps: int) -> float:
    """`lam` decayed linearly to 0 over `decay_steps` optimizer steps."""
    if decay_steps <= 0:
        raise ValueError(f"decay_steps must be positive, got {decay_steps}")
    return lam * max(0.0, 1.0 - step / decay_steps)


def distillation_divergence(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    kind: str = "forward_kl",
    jsd_beta: float = 0.5,
    token_clip: float | None = None,
) -> torch.Tensor:
    """Per-token full-vocabulary divergence between a stop-gradient teacher and the student.

    Args:
        student_logits: (B, T, V) student logits at the completion positions (with grad).
        teacher_logits: (B, T, V) teacher logits at the same positions (detached here).
        kind: "forward_kl" = KL(teacher || student) (the OPSD/OPD default),
            "reverse_kl" = KL(student || teacher), "jsd" = generalised JSD with
            mixture `m = jsd_beta * teacher + (1 - jsd_beta) * student`:
            `jsd_beta * KL(teacher || m) + (1 - jsd_beta) * KL(student || m)`.
        jsd_beta: mixture weight for "jsd", in (0, 1).
        token_clip: if set, each token's divergence is clipped pointwise at this
            value (`min(D_t, c)`): tokens beyond it stop contributing gradient, so
            a few wildly divergent (often leaked, style-only) tokens cannot dominate.

    Returns:
        (B, T) per-token divergence (>= 0). Mask and aggregate outside.
    """
    student_logp = F.log_softmax(student_logits.float(), dim=-1)
    teacher_logp = F.log_softmax(teacher_logits.detach().float(), dim=-1)
    if kind == "forward_kl":
        per_token = F.kl_div(student_logp, teacher_logp, reduction="none", log_target=True).sum(-1)
    elif kind == "reverse_kl":
        per_token = F.kl_div(teacher_logp, student_logp, reduction="none", log_target=True).sum(-1)
    elif kind == "jsd":
        if not 0.0 < jsd_beta < 1.0:
            raise ValueError(f"jsd_beta must be in (0, 1), got {jsd_beta}")
        mixture = torch.logsumexp(
            torch.stack([teacher_logp + torch.log(torch.tensor(jsd_beta)), student_logp + torch.log(torch.tensor(1 - jsd_beta))]),
            dim=0,
        )
        kl_teacher = F.kl_div(mixture, teacher_logp, reduction="none", log_target=True).sum(-1)
        kl_student = F.kl_div(mixture, student_logp, reduction="none", log_target=True).sum(-1)
        per_token = jsd_beta * kl_teacher + (1 - jsd_beta) * kl_student
    else:
        raise ValueError(f"kind must be 'forward_kl', 'reverse_kl' or 'jsd', got {kind!r}")
    if token_clip is not None:
        per_token = per_token.clamp(max=token_clip)
    return per_token


def sampled_token_advantages(teacher_logps: torch.Tensor, student_logps: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Sampled-token distillation signal `A_t = stopgrad(q_t - s_t)`, zero on padding.

    Used as a (B, T) token advantage in the policy-gradient surrogate, this
    gives the gradient of the reverse KL to the teacher on the student's own
    samples (the OPSD/OPD "sampled-token" variant). Shapes: all (B, T).
    """
    return (teacher_logps.detach() - student_logps.detach()) * mask.to(teacher_logps.dtype)
