"""Evaluation metrics: pass@k (unbiased estimator), maj@k, and evaluate() on a real tiny HF model."""

from __future__ import annotations

import math
import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import rlsd.app.evaluate as ev  # noqa: E402
from rlsd.app.evaluate import evaluate, maj_correct, majority_vote, pass_at_k  # noqa: E402
from rlsd.tasks import get_task  # noqa: E402
from rlsd.tasks.tiny import build_char_tokenizer, build_tiny_model  # noqa: E402


@pytest.mark.parametrize(
    "n,c,k,expected",
    [(5, 2, 1, 0.4), (5, 2, 2, 0.7), (5, 0, 1, 0.0), (5, 0, 3, 0.0), (5, 4, 2, 1.0), (5, 5, 1, 1.0), (4, 2, 2, 5 / 6)],
)
def test_pass_at_k_hand_values(n, c, k, expected):
    assert pass_at_k(n, c, k) == pytest.approx(expected)


def test_pass_at_k_matches_the_binomial_formula_and_stays_stable():
    for n in range(1, 12):
        for c in range(n + 1):
            for k in range(1, n + 1):
                exact = 1.0 - math.comb(n - c, k) / math.comb(n, k)
                assert pass_at_k(n, c, k) == pytest.approx(exact, abs=1e-12)
    big = pass_at_k(2000, 3, 500)  # C(2000, 500) overflows a float; the product form does not
    assert 0.0 < big < 1.0 and math.isfinite(big)
    with pytest.raises(ValueError):
        pass_at_k(3, 4, 1)
    with pytest.raises(ValueError):
        pass_at_k(3, 1, 4)


def test_majority_vote_breaks_ties_by_first_occurrence_and_skips_missing():
    assert majority_vote(["4", "3", "3", None, None, None]) == ("3", 1)
    assert majority_vote(["3", "4"]) == ("3", 0)
    assert majority_vote([None, None]) == (None, -1)
    assert maj_correct(["4", "3", "3"], [False, True, True])
    assert not maj_correct(["4", "4", "3"], [False, False, True])
    assert not maj_correct([None], [True])


ROWS = [
    {"prompt": [{"role": "user", "content": "Compute 1+2."}], "answer": "3"},
    {"prompt": "Compute 2+3.\n", "answer": "5"},  # a plain-string prompt
]
GREEDY = [["Answer: 3"], ["Answer: 7"]]
SAMPLES = [
    ["Answer: 3", "Answer: 4", "Answer: 4", "Answer: 3"],  # c=2 of 4; first two tie -> "3" wins
    ["Answer: 5", "Answer: 5", "no answer", "Answer: 6"],  # c=2 of 4; majority "5"
]


def test_evaluate_metrics_on_a_fixture(monkeypatch):
    seen = []

    def fake_generate(model, tokenizer, prompts, *, num_return_sequences=1, greedy=True, **kwargs):
        seen.append((greedy, num_return_sequences))
        return GREEDY if greedy else [s[:num_return_sequences] for s in SAMPLES]

    monkeypatch.setattr(ev, "generate", fake_generate)
    tokenizer = build_char_tokenizer()
    task = get_task("arithmetic")
    out = evaluate(None, tokenizer, ROWS, task.reward, k=2, num_samples=4, progress=False)
    assert seen == [(True, 1), (False, 4)]
    assert out["accuracy"] == 0.5 and out["reward_mean"] == 0.5
    assert out["pass@1"] == pytest.approx(0.5)
    assert out["pass@2"] == pytest.approx(5 / 6)  # both rows: n=4, c=2, k=2
    assert out["maj@2"] == 1.0  # row 0: tie "3"/"4" -> "3" (correct); row 1: "5"
    assert out["sample_reward_mean"] == 0.5
    rec = out["records"]
    assert rec[0]["completion"] == "Answer: 3" and rec[0]["reward"] == 1.0 and rec[1]["correct"] is False
    assert rec[0]["prompt"].endswith("<|im_start|>assistant\n") and rec[1]["prompt"] == "Compute 2+3.\n"
    assert rec[1]["sample_rewards"] == [1.0, 1.0, 0.0, 0.0]

    out3 = evaluate(None, tokenizer, ROWS, task.reward, k=3, num_samples=4, greedy=False, progress=False)
    assert out3["maj@3"] == 0.5  # row 0: "3","4","4" -> "4" wrong; row 1: "5" right
    assert out3["pass@3"] == 1.0  # n - c = 2 < 3
    assert out3["accuracy"] == out3["pass@1"]

    one = evaluate(None, tokenizer, ROWS, task.reward, progress=False)
    assert one["pass@1"] == one["maj@1"] == one["accuracy"] == 0.5


def test_evaluate_runs_on_a_tiny_random_model():
    tokenizer = build_char_tokenizer()
    tokenizer.padding_side = "right"  # evaluate() must left-pad anyway, and restore this
    model = build_tiny_model(tokenizer, hidden_size=32, num_layers=1, num_heads=2)
    model.train()
    task = get_task("countdown")
    rows = task.make_rows(5, seed=0, split="test")
    state = torch.random.get_rng_state()
    out = evaluate(model, tokenizer, rows, task.reward, k=2, num_samples=3, max_new_tokens=6, batch_size=2, progress=False)
    assert torch.equal(state, torch.random.get_rng_state())  # seeded sampling leaves the caller's RNG alone
    for key in ("accuracy", "reward_mean", "pass@1", "pass@2", "maj@2", "num_rows", "records"):
        assert key in out
    assert 0.0 <= out["accuracy"] <= 1.0 and out["num_rows"] == 5 and len(out["records"]) == 5
    assert all(isinstance(r["completion"], str) and len(r["samples"]) == 3 for r in out["records"])
    assert model.training and tokenizer.padding_side == "right"
    again = evaluate(
        model, tokenizer, rows, task.reward, k=2, num_samples=3, max_new_tokens=6, batch_size=2, progress=False
    )
    assert [r["samples"] for r in again["records"]] == [r["samples"] for r in out["records"]]
    # Greedy decoding of a batch equals decoding each row alone: left padding is right.
    alone = [evaluate(model, tokenizer, [r], task.reward, max_new_tokens=6, progress=False) for r in rows]
    assert [a["records"][0]["completion"] for a in alone] == [r["completion"] for r in out["records"]]
