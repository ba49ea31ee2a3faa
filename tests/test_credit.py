"""The RLSD properties of SPEC.md, on random tensors and against hand computations."""

import math

import pytest
import torch

from rlsd.credit.maths import distillation_divergence, group_advantages, linear_decay_lambda, rlsd_token_advantages, sampled_token_advantages


def random_batch(seed=0, batch=16, length=12, scale=1.0):
    gen = torch.Generator().manual_seed(seed)
    advantages = torch.randn(batch, generator=gen)
    advantages[::5] = 0.0  # some groups without signal
    teacher = -torch.rand(batch, length, generator=gen) * 4 * scale
    old = -torch.rand(batch, length, generator=gen) * 4 * scale
    mask = (torch.rand(batch, length, generator=gen) > 0.2).long()
    return advantages, teacher, old, mask


# ---- group advantages ----------------------------------------------------------------------------------------------
def test_group_advantages_hand_computed():
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0, 2.0, 2.0, 2.0, 2.0])
    adv = group_advantages(rewards, group_size=4)
    std = torch.tensor([1.0, 0.0, 0.0, 1.0]).std()  # unbiased, as TRL
    expected_first = (torch.tensor([1.0, 0.0, 0.0, 1.0]) - 0.5) / (std + 1e-4)
    torch.testing.assert_close(adv[:4], expected_first)
    assert torch.equal(adv[4:], torch.zeros(4)), "a group with equal rewards carries no signal"


def test_group_advantages_without_scaling_and_batch_scaling():
    rewards = torch.tensor([3.0, 1.0, 0.0, 2.0])
    torch.testing.assert_close(group_advantages(rewards, 2, scale="none"), torch.tensor([1.0, -1.0, -1.0, 1.0]))
    batch = group_advantages(rewards, 2, scale="batch")
    torch.testing.assert_close(batch, torch.tensor([1.0, -1.0, -1.0, 1.0]) / (rewards.std() + 1e-4))
    with pytest.raises(ValueError, match="scale"):
        group_advantages(rewards, 2, scale="median")
    with pytest.raises(ValueError, match="group_size"):
        group_advantages(rewards, 3)


# ---- RLSD token advantages -----------------------------------------------------------------------------------------
def test_rlsd_exact_values_against_hand_computation():
    advantages = torch.tensor([2.0, -1.0])
    teacher = torch.tensor([[-0.5, -2.0, -1.0], [-0.5, -2.0, -1.0]])
    old = torch.tensor([[-1.0, -1.0, -1.0], [-1.0, -1.0, -1.0]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    token_adv, stats = rlsd_token_advantages(advantages, teacher, old, mask, lam=0.5, eps_w=0.2)
    # delta = [0.5, -1, 0]; correct rollout: w = clip(exp(delta)) = [1.2, 0.8, 1.0]
    # wrong rollout: w = clip(exp(-delta)) = [0.8, 1.2, (masked)]
    expected = torch.tensor([
        [2.0 * (0.5 + 0.5 * 1.2), 2.0 * (0.5 + 0.5 * 0.8), 2.0 * 1.0],
        [-1.0 * (0.5 + 0.5 * 0.8), -1.0 * (0.5 + 0.5 * 1.2), 0.0],
    ])
    torch.testing.assert_close(token_adv, expected)
    assert stats["sign_flips"].item() == 0
    assert stats["num_tokens"].item() == 5
    torch.testing.assert_close(stats["delta_mean"], torch.tensor((0.5 - 1.0 + 0.0 + 0.5 - 1.0) / 5))
    torch.testing.assert_close(stats["clip_high_frac"], torch.tensor(2 / 5))  # exp(0.5), exp(1) > 1.2
    torch.testing.assert_close(stats["clip_low_frac"], torch.tensor(2 / 5))  # exp(-1), exp(-0.5) < 0.8
    torch.testing.assert_close(stats["weight_mean"], torch.tensor((1.2 + 0.8 + 1.0 + 0.8 + 1.2) / 5))
    torch.testing.assert_close(stats["adv_abs_before"], torch.tensor((3 * 2.0 + 2 * 1.0) / 5))


def test_unclipped_weight_is_exp_of_signed_delta():
    advantages = torch.tensor([1.0, -1.0])
    teacher = torch.tensor([[-1.05], [-1.05]])
    old = torch.tensor([[-1.0], [-1.0]])
    token_adv, _ = rlsd_token_advantages(advantages, teacher, old, torch.ones(2, 1), lam=1.0, eps_w=0.2)
    torch.testing.assert_close(token_adv, torch.tensor([[math.exp(-0.05)], [-math.exp(0.05)]]))


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("lam", [0.0, 0.3, 1.0])
@pytest.mark.parametrize("eps_w", [0.1, 0.2, 0.5])
def test_direction_comes_only_from_the_reward(seed, lam, eps_w):
    """Property 1: sign(A_t) == sign(A) on valid tokens; A == 0 gives A_t == 0."""
    advantages, teacher, old, mask = random_batch(seed, scale=3.0)
    token_adv, stats = rlsd_token_advantages(advantages, teacher, old, mask, lam=lam, eps_w=eps_w)
    valid = mask.bool()
    expected_sign = torch.sign(advantages).unsqueeze(1).expand_as(token_adv)
    assert torch.equal(torch.sign(token_adv)[valid], expected_sign[valid])
    assert torch.all(token_adv[advantages == 0] == 0)
    assert torch.all(token_adv[~valid] == 0)
    assert stats["sign_flips"].item() == 0


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("lam", [0.0, 0.5, 1.0])
@pytest.mark.parametrize("eps_w", [0.1, 0.2, 0.5])
def test_magnitude_bounds(seed, lam, eps_w):
    """Property 4: |A_t| / |A| in [1 - lam*eps_w, 1 + lam*eps_w]."""
    advantages, teacher, old, mask = random_batch(seed, scale=3.0)
    token_adv, _ = rlsd_token_advantages(advantages, teacher, old, mask, lam=lam, eps_w=eps_w)
    acting = mask.bool() & (advantages != 0).unsqueeze(1)
    ratio = (token_adv.abs() / advantages.abs().unsqueeze(1))[acting]
    assert ratio.min() >= 1 - lam * eps_w - 1e-6
    assert ratio.max() <= 1 + lam * eps_w + 1e-6
    if lam > 0:  # with teacher evidence of this spread the clip range is actually used
        assert ratio.max() > 1 + 0.5 * lam * eps_w and ratio.min() < 1 - 0.5 * lam * eps_w


def test_lambda_zero_is_grpo_exactly():
    """Property 2 (credit side): lam=0 gives A on every valid token, bit for bit."""
    advantages, teacher, old, mask = random_batch(3, scale=5.0)
    token_adv, _ = rlsd_token_advantages(advantages, teacher, old, mask, lam=0.0)
    expected = advantages.unsqueeze(1).expand_as(token_adv) * mask
    assert torch.equal(token_adv, expected)


def test_teacher_preference_orders_credit():
    """Property 3: more credit where the teacher likes a token more (A>0), more blame where it likes it less (A<0)."""
    old = torch.full((2, 3), -1.0)
    teacher = torch.tensor([[-1.1, -1.0, -0.9], [-1.1, -1.0, -0.9]])  # delta = -0.1, 0, +0.1
    token_adv, _ = rlsd_token_advantages(torch.tensor([1.0, -1.0]), teacher, old, torch.ones(2, 3), lam=1.0)
    correct, wrong = token_adv[0], token_adv[1]
    assert correct[2] > correct[1] > correct[0] > 0
    assert wrong[0].abs() > wrong[1].abs() > wrong[2].abs() > 0  # teacher dislikes token 0 most: most blame


def test_no_gradient_through_teacher_or_old_logps():
    """Property 5."""
    advantages, teacher, old, mask = random_batch(1)
    teacher.requires_grad_(True)
    old.requires_grad_(True)
    token_adv, _ = rlsd_token_advantages(advantages, teacher, old, mask)
    assert not token_adv.requires_grad
    student = torch.zeros_like(teacher, requires_grad=True)
    (token_adv * student).sum().backward()
    assert teacher.grad is None and old.grad is None
    torch.testing.assert_close(student.grad, token_adv)


def test_extreme_and_padded_values_stay_finite():
    advantages = torch.tensor([1.0, -1.0])
    teacher = torch.tensor([[0.0, -1e4], [-float("inf"), 0.0]])
    old = torch.tensor([[-1e4, 0.0], [-float("inf"), -1e4]])
    mask = torch.tensor([[1, 1], [0, 1]])
    token_adv, stats = rlsd_token_advantages(advantages, teacher, old, mask, eps_w=0.2)
    assert torch.isfinite(token_adv).all()
    assert all(torch.isfinite(v) for v in stats.values())
    torch.testing.assert_close(token_adv, torch.tensor([[1.2, 0.8], [0.0, -0.8]]))


@pytest.mark.parametrize(("kwargs", "field"), [({"lam": 1.5}, "lam"), ({"lam": -0.1}, "lam"),
                                               ({"eps_w": 0.0}, "eps_w"), ({"eps_w": 1.0}, "eps_w")])
def test_bad_arguments(kwargs, field):
    advantages, teacher, old, mask = random_batch()
    with pytest.raises(ValueError, match=field):
        rlsd_token_advantages(advantages, teacher, old, mask, **kwargs)


def test_shape_mismatch_is_reported():
    advantages, teacher, old, mask = random_batch()
    with pytest.raises(ValueError, match="same"):
        rlsd_token_advantages(advantages, teacher, old[:, :-1], mask)


def test_linear_decay():
    assert linear_decay_lambda(1.0, 0, 10) == 1.0
    assert linear_decay_lambda(0.5, 5, 10) == 0.25
    assert linear_decay_lambda(1.0, 20, 10) == 0.0


# ---- OPSD / OPD signals --------------------------------------------------------------------------------------------
def test_forward_and_reverse_kl_match_definitions():
    gen = torch.Generator().manual_seed(0)
    student = torch.randn(2, 3, 7, generator=gen)
    teacher = torch.randn(2, 3, 7, generator=gen)
    p_t, p_s = teacher.softmax(-1), student.softmax(-1)
    forward = (p_t * (p_t.log() - p_s.log())).sum(-1)
    reverse = (p_s * (p_s.log() - p_t.log())).sum(-1)
    torch.testing.assert_close(distillation_divergence(student, teacher, "forward_kl"), forward)
    torch.testing.assert_close(distillation_divergence(student, teacher, "reverse_kl"), reverse)
    m = 0.3 * p_t + 0.7 * p_s
    jsd = 0.3 * (p_t * (p_t.log() - m.log())).sum(-1) + 0.7 * (p_s * (p_s.log() - m.log())).sum(-1)
    torch.testing.assert_close(distillation_divergence(student, teacher, "jsd", jsd_beta=0.3), jsd)


def test_divergence_is_zero_for_identical_distributions_and_teacher_gets_no_gradient():
    logits = torch.randn(2, 4, 9)
    for kind in ("forward_kl", "reverse_kl", "jsd"):
        torch.testing.assert_close(distillation_divergence(logits, logits, kind), torch.zeros(2, 4), atol=1e-6, rtol=0)
    student = torch.randn(2, 4, 9, requires_grad=True)
    teacher = torch.randn(2, 4, 9, requires_grad=True)
    distillation_divergence(student, teacher).sum().backward()
    assert teacher.grad is None and student.grad is not None


def test_token_clip_caps_each_token():
    student = torch.zeros(1, 2, 5)
    teacher = torch.tensor([[[8.0, 0, 0, 0, 0], [0.1, 0, 0, 0, 0]]])
    raw = distillation_divergence(student, teacher)
    clipped = distillation_divergence(student, teacher, token_clip=0.5)
    assert raw[0, 0] > 0.5 > raw[0, 1]
    torch.testing.assert_close(clipped, torch.tensor([[0.5, raw[0, 1].item()]]))
    with pytest.raises(ValueError, match="kind"):
        distillation_divergence(student, teacher, "tv")


def test_sampled_token_advantages():
    teacher = torch.tensor([[-1.0, -2.0], [-0.5, -3.0]], requires_grad=True)
    student = torch.tensor([[-1.5, -1.0], [-0.5, -1.0]])
    mask = torch.tensor([[1, 1], [1, 0]])
    adv = sampled_token_advantages(teacher, student, mask)
    torch.testing.assert_close(adv, torch.tensor([[0.5, -1.0], [0.0, 0.0]]))
    assert not adv.requires_grad
