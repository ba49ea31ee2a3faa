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
    active: torch.Tensor | None = None,
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
        active: optional (B, T) bool, tokens where the teacher's weight applies; elsewhere `A_t = A`
            exactly (the RLSD authors' `negative_only` / `thought_only` options: `reweight = 1` there).

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
    if active is not None:
        if active.shape != mask.shape:
            raise ValueError(f"active {tuple(active.shape)} must have the (B, T) shape of mask {tuple(mask.shape)}")
        scale = torch.where(active.bool(), scale, torch.ones_like(scale))
    token_adv = (seq_adv * scale.to(seq_adv.dtype)) * valid.to(seq_adv.dtype)

    with torch.no_grad():
        acting = valid & (seq_adv != 0)
        if active is not None:
            acting = acting & active.bool()
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


def scheduled_lambda(lam: float, step: int, warmup_steps: int = 0, decay_steps: int | None = None) -> float:
    """lambda at optimizer step `step`: linear warmup 0 -> `lam` over `warmup_steps`, then `lam`, or, with
    `decay_steps`, a linear decay to 0 over that many steps after the warmup.

    The RLSD authors' schedule (iie-ycx/RLSD `opsd_trainer.py`, and ms-swift's `_rlsd_effective_lambda`):
    `lam * step / warmup` while `step < warmup`, then `lam * max(1 - (step - warmup) / decay, 0)`.
    """
    if warmup_steps < 0:
        raise ValueError(f"warmup_steps must be >= 0, got {warmup_steps}")
    if warmup_steps > 0 and step < warmup_steps:
        return lam * step / warmup_steps
    if decay_steps is None:
        return lam
    return linear_decay_lambda(lam, step - warmup_steps, decay_steps)


def thought_span_mask(token_texts: list[list[str]], start: str, end: str, width: int
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """Tokens strictly inside the reasoning span `start ... end` of each completion (the markers excluded).

    Args:
        token_texts: per completion, the text of each of its tokens in order (their concatenation is the text).
        start, end: the span's markers, e.g. "<think>" and "</think>"; "" for start means the completion's
            beginning (e.g. `end="Answer:"`: everything before the final-answer line).
        width: T, the batch's completion width.
    Returns:
        mask (B, T) bool: tokens whose text lies wholly after the first `start` and before the first `end` after
        it (no `end`: to the completion's end); found (B,) bool: whether the completion has a span. A token that
        overlaps a marker is outside.
    """
    mask = torch.zeros(len(token_texts), width, dtype=torch.bool)
    found = torch.zeros(len(token_texts), dtype=torch.bool)
    for row, pieces in enumerate(token_texts):
        text = "".join(pieces)
        begin = text.find(start) if start else 0
        if begin < 0:
            continue
        begin += len(start)
        stop = text.find(end, begin) if end else -1
        stop = len(text) if stop < 0 else stop
        if stop <= begin:
            continue
        offset = 0
        for t, piece in enumerate(pieces[:width]):
            if offset >= begin and offset + len(piece) <= stop:
                mask[row, t] = True
            offset += len(piece)
        found[row] = bool(mask[row].any())
    return mask, found


def distillation_divergence(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    kind: str = "forward_kl",
    jsd_beta: float = 0.5,
    token_clip: float | None = None,
    top_k: int | None = None,
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
        top_k: if set, both distributions are restricted to the student's K most
            likely tokens at each position and renormalised there (TRL SDPO's
            `topk_logits` without a tail bucket): O(K) instead of O(V) per token.

    Returns:
        (B, T) per-token divergence (>= 0). Mask and aggregate outside.
    """
    if top_k is not None and top_k < student_logits.size(-1):
        support = student_logits.detach().topk(top_k, dim=-1).indices
        student_logits, teacher_logits = student_logits.gather(-1, support), teacher_logits.gather(-1, support)
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


def blended_token_advantages(
    advantages: torch.Tensor,
    teacher_logps: torch.Tensor,
    baseline_logps: torch.Tensor,
    mask: torch.Tensor,
    teacher_rows: torch.Tensor,
    policy_weight: float,
    distill_weight: float,
) -> torch.Tensor:
    """GRPO advantage plus the sampled-token distillation signal, per token (sdpo, grpo+opsd).

    ```
    A_t = policy_weight * A + distill_weight * teacher_rows * stopgrad(q_t - b_t)
    ```
    with `b_t = s_old_t` (the usual sampled-token signal, see `sampled_token_advantages`)
    or `q_wrong_t` (contrastive evidence). SDPO: `(lambda, 1 - lambda)`; GRPO+OPSD: `(1, opsd_coef)`.

    Args:
        advantages: (B,) GRPO sequence advantages.
        teacher_logps, baseline_logps: (B, T) q_t and b_t.
        mask: (B, T) 1 for completion tokens that count.
        teacher_rows: (B,) 1 for rows that have a teacher context (SDPO: a demonstration), else 0.
        policy_weight, distill_weight: the two weights (>= 0).

    Returns:
        (B, T) token advantages, zero where `mask` is 0. With `distill_weight == 0` every
        token of a row carries exactly `policy_weight * A`.
    """
    mask = mask.to(advantages.dtype)
    signal = (teacher_logps.detach() - baseline_logps.detach()).to(advantages.dtype)
    signal = torch.where(mask.bool(), signal, torch.zeros_like(signal))  # padding may hold inf - inf
    rows = teacher_rows.to(advantages.dtype).unsqueeze(1)
    return (policy_weight * advantages.detach().unsqueeze(1) + distill_weight * rows * signal) * mask


def contrastive_rlsd_token_advantages(
    advantages: torch.Tensor,
    right_logps: torch.Tensor,
    wrong_logps: torch.Tensor,
    mask: torch.Tensor,
    lam: float = 1.0,
    eps_w: float = 0.2,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """RLSD with contrastive teacher evidence: `delta_t = stopgrad(q_right_t - q_wrong_t)`.

    `q_wrong` is the same teacher over the same completion with a *wrong* reference
    in its prompt: a hint's style shift (shorter, more direct text) moves both terms and
    cancels, what is left is evidence for the right answer. Everything after `delta_t`
    is `rlsd_token_advantages` (the weight clip and `A * ((1 - lam) + lam * w_t)`), so
    sign(A_t) == sign(A) and |A_t|/|A| in [1 - lam*eps_w, 1 + lam*eps_w] still hold.
    A wrong reference that scores like the right one (q_wrong == q_right) gives
    delta = 0, w = 1, A_t = A: no evidence, GRPO's uniform credit. Shapes as
    `rlsd_token_advantages`, with `wrong_logps` (B, T) in place of `old_logps`.
    """
    return rlsd_token_advantages(advantages, right_logps, wrong_logps, mask, lam=lam, eps_w=eps_w)


def contrastive_target_logits(
    student_logits: torch.Tensor, right_logits: torch.Tensor, wrong_logits: torch.Tensor
) -> torch.Tensor:
    """Distillation target for contrastive OPSD/SDPO: the student tilted by the teacher's contrast.

    `log p_target(v) = log pi_student(v) + log pi_right(v) - log pi_wrong(v) + const`
    (normalise with a softmax). A token the teacher likes more under the right reference
    than under a wrong one gains mass; with `right == wrong` the target is the student
    itself and the divergence is 0. At the sampled token this is the full-vocabulary
    form of the sampled-token signal `q_right_t - q_wrong_t`.

    Args: (B, T, V) logits each; returns detached (B, T, V) unnormalised log-probs.
    """
    with torch.no_grad():
        return (F.log_softmax(student_logits.float(), dim=-1) + F.log_softmax(right_logits.float(), dim=-1)
                - F.log_softmax(wrong_logits.float(), dim=-1))


def rlcsd_token_advantages(
    advantages: torch.Tensor,
    right_logps: torch.Tensor,
    wrong_logps: torch.Tensor,
    wrong_valid: torch.Tensor,
    mask: torch.Tensor,
    tau: float = 0.02,
    beta: float = 1.0,
    lam: float = 0.5,
    delta: float = 0.02,
    eta: float = 1.0,
    clip_low: float = -2.0,
    clip_high: float = 2.0,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """RLCSD token advantages (arXiv 2606.11709; github THU-BPM/RLCSD `compute_policy_loss_rlcsd`).

    ```
    e_t   = q_right_t - log( (1/K) * sum_k exp(q_wrong_k_t) )      # contrast with the K-hint mixture
    r_t   = clip(beta * lam * tanh(e_t / tau), clip_low, clip_high)  # bounded residual
    sel_t = |r_t| > delta                                            # tokens the contrast acts on
    A_t   = A                          where not sel_t
          = max(A + r_t, 0)  if A > 0,  min(A + r_t, 0)  if A < 0,  0 if A = 0   where sel_t
    ```
    and the selected tokens' advantages are weighted by `eta` (the authors' `eta * selected_loss`).

    Args:
        advantages: (B,) GRPO sequence advantages A.
        right_logps: (B, T) teacher log-probs under the right hint, q_right.
        wrong_logps: (B, K, T) teacher log-probs under each wrong hint; `wrong_valid` (B, K) marks real slots.
        mask: (B, T) 1 for tokens that count. Rows with no valid wrong slot act as if unselected.
    Returns:
        token_advantages (B, T), zero where `mask` is 0: sign(A_t) is sign(A) or 0, never the opposite, and
        |A_t - A| <= min(beta * lam, max(|clip_low|, |clip_high|)) before the `eta` weight.
        stats: 0-d tensors `e_mean`, `selected_frac` (over valid tokens), `residual_mean` (over selected),
        `k_mean` (valid wrong slots per row), `sign_flips` (must be 0).
    """
    valid = mask.bool()
    seq = advantages.detach().unsqueeze(1)  # (B, 1)
    slots = wrong_valid.bool()
    k = slots.sum(dim=1).clamp(min=1).to(torch.float32)  # (B,)
    masked = wrong_logps.detach().float().masked_fill(~slots.unsqueeze(-1), float("-inf"))
    log_mixture = torch.logsumexp(masked, dim=1) - torch.log(k).unsqueeze(-1)  # (B, T); -inf where no slot
    has_wrong = slots.any(dim=1, keepdim=True) & valid
    e = torch.where(has_wrong, right_logps.detach().float() - log_mixture, torch.zeros_like(log_mixture))
    residual = (beta * lam * torch.tanh(e / max(tau, 1e-6))).clamp(min=clip_low, max=clip_high)
    selected = (residual.abs() > delta) & has_wrong
    raw = seq.float() + residual
    modified = torch.where(seq > 0, raw.clamp(min=0.0), torch.where(seq < 0, raw.clamp(max=0.0),
                                                                      torch.zeros_like(raw)))
    token_adv = torch.where(selected, eta * modified, seq.float().expand_as(modified))
    token_adv = (token_adv * valid.to(token_adv.dtype)).to(advantages.dtype)
    with torch.no_grad():
        stats = {
            "e_mean": masked_mean(e, has_wrong),
            "selected_frac": masked_mean(selected.float(), valid),
            "residual_mean": masked_mean(residual, selected),
            "k_mean": slots.sum(dim=1).float().mean(),
            "sign_flips": (valid & (token_adv * seq < 0)).sum().float(),
        }
    return token_adv, stats
