"""RLCSD and the RLSD options (negative-only, thought-only, lambda warmup): hand-computed formulas, guarantees,
lambda = 0 == GRPO, and short runs through the trainer."""

import math
import random

import pytest
import torch
from conftest import make_dataset, tiny_config

from rlsd import RLSDConfig, RLSDTrainer
from rlsd.credit import maths as credit
from rlsd.algorithms import rlcsd
from test_trainer import generation_batch
from trainer_helpers import loss_and_grads, record_teacher_texts

LN = math.log


# ---- RLSD options: the formulas by hand ----------------------------------------------------------------------------
def test_active_tokens_by_hand():
    # Weights exp(sign(A) * delta) clipped to [0.8, 1.2]; scale = 0.5 + 0.5 * w (lambda 0.5).
    advantages = torch.tensor([2.0, -1.0])
    teacher = torch.tensor([[LN(1.5), LN(0.5)], [LN(0.5), LN(2.0)]])
    old, mask = torch.zeros(2, 2), torch.ones(2, 2)
    full, _ = credit.rlsd_token_advantages(advantages, teacher, old, mask, lam=0.5, eps_w=0.2)
    torch.testing.assert_close(full, torch.tensor([[2.2, 1.8], [-1.1, -0.9]]))
    negative = (advantages < 0).unsqueeze(1).expand(2, 2)
    neg, stats = credit.rlsd_token_advantages(advantages, teacher, old, mask, lam=0.5, eps_w=0.2, active=negative)
    torch.testing.assert_close(neg, torch.tensor([[2.0, 2.0], [-1.1, -0.9]]))
    assert torch.equal(neg[0], torch.tensor([2.0, 2.0])), "outside the active tokens A_t is A exactly"
    assert stats["weight_mean"].item() == pytest.approx(1.0) and stats["sign_flips"] == 0
    thought = torch.tensor([[True, False], [False, True]])
    th, _ = credit.rlsd_token_advantages(advantages, teacher, old, mask, lam=0.5, eps_w=0.2, active=thought)
    torch.testing.assert_close(th, torch.tensor([[2.2, 2.0], [-1.0, -0.9]]))


@pytest.mark.parametrize("lam,eps_w", [(0.0, 0.2), (0.3, 0.5), (1.0, 0.9)])
def test_options_keep_sign_and_bound_and_lambda_zero_is_grpo(lam, eps_w):
    generator = torch.Generator().manual_seed(1)
    advantages = torch.randn(16, generator=generator)
    advantages[::5] = 0.0
    teacher, old = torch.randn(16, 9, generator=generator) * 3, torch.randn(16, 9, generator=generator)
    mask = (torch.rand(16, 9, generator=generator) > 0.2).float()
    active = torch.rand(16, 9, generator=generator) > 0.5
    out, stats = credit.rlsd_token_advantages(advantages, teacher, old, mask, lam=lam, eps_w=eps_w, active=active)
    seq = advantages.unsqueeze(1).expand_as(out)
    valid = mask.bool()
    assert torch.equal(torch.sign(out[valid]), torch.sign(seq[valid])) and stats["sign_flips"] == 0
    ratio = (out[valid & (seq != 0)] / seq[valid & (seq != 0)])
    assert ratio.min() >= 1 - lam * eps_w - 1e-6 and ratio.max() <= 1 + lam * eps_w + 1e-6
    if lam == 0.0:
        assert torch.equal(out, seq * mask), "lambda = 0 is GRPO exactly, options or not"


def test_lambda_warmup_then_decay_by_hand():
    assert [credit.scheduled_lambda(0.8, s, warmup_steps=4) for s in (0, 2, 4, 10)] == \
        pytest.approx([0.0, 0.4, 0.8, 0.8])
    assert [credit.scheduled_lambda(0.8, s, warmup_steps=4, decay_steps=10) for s in (3, 4, 9, 14, 20)] == \
        pytest.approx([0.6, 0.8, 0.4, 0.0, 0.0])
    assert credit.scheduled_lambda(0.5, 7) == 0.5 and credit.scheduled_lambda(0.5, 5, decay_steps=10) == 0.25


def test_thought_span_mask_finds_the_reasoning_between_markers_or_before_the_answer_line():
    rows = [["<th", "ink>", "a", "b", "</think>", "Answer: 3"], ["no", " span"], ["x", "Answer", ": 4"],
            ["<think>", "c", "d"]]
    mask, found = credit.thought_span_mask(rows, "<think>", "</think>", 6)
    assert mask.int().tolist()[0] == [0, 0, 1, 1, 0, 0] and mask[3].int().tolist()[:3] == [0, 1, 1]
    assert found.tolist() == [True, False, False, True]
    before, found = credit.thought_span_mask(rows, "", "Answer", 6)
    assert before.int().tolist()[2] == [1, 0, 0, 0, 0, 0] and found[2]


def test_option_fields_are_checked():
    for field, value, message in [("rlsd_lambda_warmup_steps", -1, "must be >= 0"),
                                  ("rlsd_thought_markers", ["", ""], r"must be \[start, end\] strings, not both empty")]:
        with pytest.raises(ValueError, match=rf"RLSDConfig\.{field}: {message}"):
            RLSDConfig(output_dir="/tmp/unused", **{field: value})


def _alternating(prompts, completions, **kwargs):
    return [float(i % 2) for i in range(len(completions))]


def test_options_at_lambda_zero_equal_grpo_and_train(tiny_model_dir, tmp_path):
    dataset = make_dataset()
    grpo_args = tiny_config(tmp_path / "g", per_device_train_batch_size=8, algorithm="grpo")
    args = tiny_config(tmp_path / "r", per_device_train_batch_size=8, algorithm="rlsd", rlsd_lambda=0.0,
                       rlsd_negative_only=True, rlsd_thought_only=True, rlsd_lambda_warmup_steps=2)
    grpo = RLSDTrainer(model=tiny_model_dir, reward_funcs=_alternating, args=grpo_args, train_dataset=dataset)
    rlsd = RLSDTrainer(model=tiny_model_dir, reward_funcs=_alternating, args=args, train_dataset=dataset)
    rlsd.model.train()
    torch.manual_seed(0)
    batch = rlsd._generate_and_score_completions(generation_batch(rlsd, dataset))
    assert batch["rlsd_thought_mask"].shape == batch["completion_ids"].shape
    assert rlsd.teacher_pass.metrics["rlsd/thought_fallback_frac"][-1] == 1.0, "no <think> span: every token"
    loss_rlsd, grads_rlsd = loss_and_grads(rlsd, batch)
    loss_grpo, grads_grpo = loss_and_grads(grpo, batch)
    assert torch.equal(loss_rlsd, loss_grpo)
    assert all(torch.equal(grads_rlsd[n], grads_grpo[n]) for n in grads_grpo)
    rlsd.args.rlsd_lambda, rlsd.args.rlsd_lambda_warmup_steps = 1.0, 0
    token_adv = rlsd.algorithm.token_advantages(rlsd.teacher_pass, batch, torch.zeros_like(batch["teacher_per_token_logps"]))
    right = batch["advantages"] > 0
    assert torch.equal(token_adv[right], (batch["advantages"].unsqueeze(1) * batch["completion_mask"])[right])
    assert not torch.equal(token_adv[~right], (batch["advantages"].unsqueeze(1) * batch["completion_mask"])[~right])


# ---- RLCSD --------------------------------------------------------------------------------------------------------
def test_rlcsd_token_advantages_by_hand():
    advantages = torch.tensor([1.0, -1.0, 0.5, 0.0])
    right = torch.tensor([[0.0, -1.0, 0.01], [0.0, -1.0, 1.0], [-3.0, 0.0, 0.0], [-1.0, 0.0, 0.0]])
    wrong = torch.zeros(4, 2, 3)
    wrong[1, 1] = LN(3.0)  # row 1: mixture of exp(0) and exp(ln 3): log((1 + 3) / 2) = ln 2
    valid = torch.tensor([[True, False], [True, True], [True, False], [True, False]])
    mask = torch.ones(4, 3)
    out, stats = credit.rlcsd_token_advantages(advantages, right, wrong, valid, mask, tau=0.02, beta=1.0, lam=0.5,
                                               delta=0.02, eta=1.0, clip_low=-2.0, clip_high=2.0)
    r = lambda e: 0.5 * math.tanh(e / 0.02)  # noqa: E731 - the residual, unclipped (|r| <= 0.5 here)
    expected = torch.tensor([
        [1.0, 1.0 + r(-1.0), 1.0 + r(0.01)],  # e = 0: not selected (|r| = 0 <= delta)
        [-1.0 + r(-LN(2)), -1.0 + r(-1.0 - LN(2)), min(-1.0 + r(1.0 - LN(2)), 0.0)],
        [max(0.5 + r(-3.0), 0.0), 0.5, 0.5],  # 0.5 - 0.5 = 0: A > 0 clamps at 0, never flips
        [0.0, 0.0, 0.0],
    ])
    torch.testing.assert_close(out, expected)
    assert stats["sign_flips"] == 0 and stats["selected_frac"].item() == pytest.approx(7 / 12)
    clipped, _ = credit.rlcsd_token_advantages(advantages, right, wrong, valid, mask, beta=10.0, lam=1.0,
                                               clip_low=-0.3, clip_high=0.3)
    assert (clipped - advantages.unsqueeze(1)).abs().max() <= 0.3 + 1e-6, "the residual clip bounds |A_t - A|"
    assert torch.equal(torch.sign(clipped) * torch.sign(advantages.unsqueeze(1)) >= 0, torch.ones(4, 3).bool())


def test_rlcsd_hint_draw_follows_the_authors_rules():
    # Two groups of 4. Group 0: successes 0, 2; failures 1, 3 (3 has no final answer). Group 1: all failed.
    rewards = [1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0]
    answers = ["5", "4", "5", None, "1", "2", "3", "4"]
    draws = rlcsd.draw_hints(rewards, answers, 4, 0.5, k_max=4, rng=random.Random(0), targets=range(8))
    assert draws[0] == (2, [1]) and draws[2] == (0, [1]), "the other success; the one failure with an answer"
    assert draws[1] is None, "a wrong target never uses itself and the group has no other usable failure"
    assert draws[3] is not None and draws[3][1] == [1] and draws[3][0] in (0, 2)
    assert draws[4:] == [None] * 4, "no success in the group: no right hint, dropped"
    with_reference = rlcsd.draw_hints(rewards, answers, 4, 0.5, 2, random.Random(0), range(4, 8), True)
    assert all(d[0] is None and len(d[1]) == 2 and 4 + i not in d[1] for i, d in enumerate(with_reference))


def test_rlcsd_trains_and_scores_under_peer_hints(tiny_model_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(rlcsd, "extract_final_answer", lambda text, **kw: text[:2] or "?")  # every rollout answers
    dataset = make_dataset()
    args = tiny_config(tmp_path, per_device_train_batch_size=8, algorithm="rlcsd", rlcsd_k_max=2, max_steps=2,
                       logging_steps=1)
    trainer = RLSDTrainer(model=tiny_model_dir, reward_funcs=_alternating, args=args, train_dataset=dataset)
    seen = record_teacher_texts(trainer)
    trainer.model.train()
    rows = generation_batch(trainer, dataset)
    batch = trainer._generate_and_score_completions(rows)
    texts = trainer.teacher_pass.completion_texts(batch)
    # Successes at odd positions: a failed target has one other failure to contrast with, a successful one two.
    assert batch["rlcsd_rows"].tolist() == [1.0] * 8 and batch["rlcsd_wrong_valid"].sum(1).tolist() == [1, 2] * 4
    right, wrong = seen[0], seen[1]
    for i in range(8):
        group = range(i - i % 4, i - i % 4 + 4)
        assert any(texts[j] in right[i] for j in group if j % 2 == 1 and j != i), "a success of its group"
        assert any(texts[j] in wrong[i] for j in group if j % 2 == 0 and j != i), "a failure, never itself"
    token_adv = trainer.algorithm.token_advantages(trainer.teacher_pass, batch, torch.zeros(batch["completion_ids"].shape))
    expected, _ = credit.rlcsd_token_advantages(batch["sequence_advantages"], batch["teacher_per_token_logps"],
                                                batch["rlcsd_wrong_logps"], batch["rlcsd_wrong_valid"],
                                                batch["completion_mask"])
    assert torch.equal(token_adv, expected)
    del trainer.teacher_pass.logps  # the spy goes: the class's own method again
    trainer.train()
    logged = {k for entry in trainer.state.log_history for k in entry}
    assert {"rlcsd/selected_frac", "rlcsd/valid_row_frac", "teacher/contrast_time_frac"} <= logged
