"""Shared-prefix teacher pass: same numbers as the one-forward-per-row pass, and the fallbacks that keep it safe."""

import pytest
import torch
from conftest import MARKER, digit_reward, tiny_config
from datasets import Dataset
from transformers import MistralConfig, MistralForCausalLM

from rlsd import RLSDTrainer
from rlsd.teacher import shared_prefix as teacher_pass


def varied_dataset():
    """Prompts (and so left padding) of clearly different lengths; the first group gets reward 1 everywhere."""
    questions = ["0+1?", "What is 12+30, written in digits?", "Add 7 and 5.", "Compute 100+23 and then stop."]
    return Dataset.from_list([{"prompt": [{"role": "user", "content": q}], "answer": f"{MARKER}{i}",
                               "solution": f"step {i}"} for i, q in enumerate(questions)])


def first_group_solved(prompts, completions, **kwargs):
    texts = [p[-1]["content"] for p in prompts]
    return [1.0 if t.startswith("0+1") else s for t, s in zip(texts, digit_reward(prompts, completions))]


def build(model_dir, tmp_path, algorithm, lora=False, teacher_dir=None, **extra):
    from peft import LoraConfig

    args = tiny_config(tmp_path, algorithm=algorithm, per_device_train_batch_size=8, num_generations=2,
                       teacher_model=teacher_dir, **extra)
    peft_config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM") \
        if lora else None
    trainer = RLSDTrainer(model=model_dir, reward_funcs=first_group_solved, args=args, train_dataset=varied_dataset(),
                          peft_config=peft_config)
    if lora:  # LoRA's B starts at 0: make the adapters change the forward so the test sees them
        with torch.no_grad():
            for name, param in trainer.model.named_parameters():
                if "lora_B" in name:
                    param.normal_(0, 0.5)
    return trainer


def batch_of(trainer):
    rows = [dict(r) for r in varied_dataset()]
    rows = [row for row in rows for _ in range(trainer.num_generations)]
    torch.manual_seed(0)
    trainer.model.train()
    return rows, trainer._generate_and_score_completions(rows)


@pytest.mark.parametrize("algorithm,lora,extra", [
    ("rlsd", False, {}),
    ("rlsd", True, {"teacher_mode": "ema"}),
    ("opsd", True, {"distill_divergence": "sampled_token"}),
    ("opd", False, {"distill_divergence": "sampled_token"}),
])
def test_shared_prefix_teacher_logps_equal_the_unshared_pass(tiny_model_dir, tiny_teacher_dir, tmp_path, algorithm,
                                                             lora, extra):
    trainer = build(tiny_model_dir, tmp_path, algorithm, lora=lora,
                    teacher_dir=tiny_teacher_dir if algorithm == "opd" else None, **extra)
    calls = []
    original = teacher_pass.shared_prefix_logps
    rows, batch = batch_of(trainer)
    teacher_ids, teacher_mask = trainer._teacher_prompt_tensors(rows, batch)
    assert (teacher_mask == 0).any(dim=1).any() and not (teacher_mask == 0).any(dim=1).all(), "mixed left padding"

    def spy(*args, **kwargs):
        calls.append(args[1].size(0))
        return original(*args, **kwargs)

    scored = trainer.algorithm.rows_to_score(trainer.teacher_pass, batch)  # RLSD: rows with A != 0
    teacher_pass.shared_prefix_logps = spy
    try:
        shared = trainer.teacher_pass.logps(teacher_ids, teacher_mask, batch, rows=scored)
    finally:
        teacher_pass.shared_prefix_logps = original
    assert calls, "the shared-prefix pass ran"
    trainer.args.teacher_share_prefix = False
    plain = trainer.teacher_pass.logps(teacher_ids, teacher_mask, batch, rows=scored)
    skipped = batch["advantages"] == 0
    if algorithm == "rlsd":
        assert skipped[:2].all() and not skipped[2:].all(), "the solved group is skipped, others scored"
        assert calls == [int((~skipped).sum())]
        assert torch.equal(shared[skipped], torch.zeros_like(shared[skipped]))
    mask = batch["completion_mask"].bool()
    assert mask[~skipped].any()
    torch.testing.assert_close(shared[mask], plain[mask], rtol=0, atol=1e-5)


def test_shared_prefix_full_vocab_distillation_loss_equals_the_unshared_one(tiny_model_dir, tmp_path):
    trainer = build(tiny_model_dir, tmp_path, "opsd", lora=True)
    _, batch = batch_of(trainer)
    trainer.current_gradient_accumulation_steps = 1
    with torch.no_grad():
        shared = trainer._compute_loss(trainer.model, batch)
        trainer.args.teacher_share_prefix = False
        plain = trainer._compute_loss(trainer.model, batch)
    assert shared.item() > 0
    torch.testing.assert_close(shared, plain, rtol=1e-5, atol=1e-6)


def test_prompts_are_grouped_by_content_not_position():
    ids = torch.tensor([[0, 5, 6], [7, 8, 9], [0, 5, 6], [0, 0, 6]])
    mask = torch.tensor([[0, 1, 1], [1, 1, 1], [0, 1, 1], [0, 0, 1]])
    first, inverse = teacher_pass.unique_prompts(ids, mask)
    assert first.tolist() == [0, 1, 3] and inverse.tolist() == [0, 1, 0, 2]


def test_fallback_where_sharing_cannot_apply(tiny_model_dir, tmp_path):
    trainer = build(tiny_model_dir, tmp_path, "rlsd")
    model = trainer.model
    assert teacher_pass.share_prefix_blocker(model) is None
    assert "sharded" in teacher_pass.share_prefix_blocker(model, sharded=True)
    assert "multimodal" in teacher_pass.share_prefix_blocker(model, {"pixel_values": torch.zeros(1)})
    sliding = MistralForCausalLM(MistralConfig(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                               num_attention_heads=2, num_key_value_heads=1, sliding_window=4))
    assert "sliding" in teacher_pass.share_prefix_blocker(sliding)

    # In the trainer: multimodal rows never take the shared pass ...
    rows, batch = batch_of(trainer)
    assert trainer.teacher_pass.shares_prefix(model, batch)
    for key in ("pixel_values", "image_grid_thw", "teacher_mm_token_type_ids"):
        assert not trainer.teacher_pass.shares_prefix(model, {**batch, key: torch.ones(1, 3)}), key
    # ... and wherever a blocker is named, the plain pass runs and gives the same numbers.
    teacher_ids, teacher_mask = trainer._teacher_prompt_tensors(rows, batch)
    expected = trainer.teacher_pass.logps(teacher_ids, teacher_mask, batch)
    original = (teacher_pass.shared_prefix_logps, teacher_pass.share_prefix_blocker)

    def refuse(*args, **kwargs):
        raise AssertionError("shared pass used although a blocker was named")

    teacher_pass.shared_prefix_logps = refuse
    teacher_pass.share_prefix_blocker = lambda *args, **kwargs: "no cache support"
    try:
        got = trainer.teacher_pass.logps(teacher_ids, teacher_mask, batch)
    finally:
        teacher_pass.shared_prefix_logps, teacher_pass.share_prefix_blocker = original
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)


def test_three_training_steps_give_the_same_losses_with_and_without_sharing(tiny_model_dir, tmp_path):
    losses = {}
    for share in (True, False):
        trainer = build(tiny_model_dir, tmp_path / str(share), "rlsd", max_steps=3, teacher_share_prefix=share)
        trainer.train()
        losses[share] = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    assert len(losses[True]) == 3 and any(loss != 0 for loss in losses[True])
    assert losses[True] == pytest.approx(losses[False], rel=1e-4, abs=1e-6)


def _left_right_padded_batch(vocab: int, prompt_lengths, completion_lengths, prompt_cols: int, completion_cols: int):
    """Random left-padded prompts and right-padded completions (pad id 0, mask 0 on padding)."""
    gen = torch.Generator().manual_seed(0)
    rows = len(prompt_lengths)
    prompt_ids = torch.zeros(rows, prompt_cols, dtype=torch.long)
    prompt_mask = torch.zeros(rows, prompt_cols, dtype=torch.long)
    completion_ids = torch.zeros(rows, completion_cols, dtype=torch.long)
    completion_mask = torch.zeros(rows, completion_cols, dtype=torch.long)
    for row, (p, c) in enumerate(zip(prompt_lengths, completion_lengths, strict=True)):
        prompt_ids[row, prompt_cols - p:] = torch.randint(3, vocab, (p,), generator=gen)
        prompt_mask[row, prompt_cols - p:] = 1
        completion_ids[row, :c] = torch.randint(3, vocab, (c,), generator=gen)
        completion_mask[row, :c] = 1
    prompt_ids[1], prompt_mask[1] = prompt_ids[0], prompt_mask[0]  # rows 0 and 1 share a prompt
    return prompt_ids, prompt_mask, completion_ids, completion_mask


@pytest.mark.parametrize("completion_cols", [5, 1])
def test_shared_pass_runs_t_columns_per_row_and_matches_the_full_forward(tiny_model_dir, completion_cols):
    from transformers import AutoModelForCausalLM
    from trl.trainer.utils import add_fused_lm_head

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    add_fused_lm_head(model, temperature=0.7, outputs=("log_probs", "entropy"))
    vocab = model.config.vocab_size
    prompt_ids, prompt_mask, completion_ids, completion_mask = _left_right_padded_batch(
        vocab, [6, 6, 3, 8], [completion_cols, max(completion_cols - 2, 1), completion_cols, 1], 8, completion_cols)
    widths = []
    hook = model.model.register_forward_pre_hook(lambda module, args, kwargs: widths.append(kwargs["input_ids"].size(1)),
                                                 with_kwargs=True)
    with torch.no_grad():
        shared = teacher_pass.shared_prefix_logps(model, prompt_ids, prompt_mask, completion_ids, completion_mask)
        logits = teacher_pass.shared_prefix_logits(model, prompt_ids, prompt_mask, completion_ids, completion_mask)
        hook.remove()
        input_ids = torch.cat([prompt_ids, completion_ids], dim=1)
        attention_mask = torch.cat([prompt_mask, completion_mask], dim=1)
        full_logits = model(input_ids=input_ids, attention_mask=attention_mask).logits[:, 7:-1]
    # Prefix pass (P - 1 columns), then the tail: the last prompt column and T - 1 completion tokens.
    assert widths == [7, completion_cols, 7, completion_cols]
    expected = torch.log_softmax(full_logits / 0.7, dim=-1).gather(-1, completion_ids.unsqueeze(-1)).squeeze(-1)
    mask = completion_mask.bool()
    torch.testing.assert_close(shared[mask], expected[mask], rtol=0, atol=1e-5)
    assert torch.equal(shared[~mask], torch.zeros_like(shared[~mask]))
    torch.testing.assert_close(logits[mask], full_logits[mask], rtol=0, atol=1e-5)


def test_shared_pass_with_empty_completions(tiny_model_dir):
    from transformers import AutoModelForCausalLM
    from trl.trainer.utils import add_fused_lm_head

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    add_fused_lm_head(model)
    prompt_ids, prompt_mask, completion_ids, completion_mask = _left_right_padded_batch(
        model.config.vocab_size, [4, 4], [0, 0], 5, 0)
    with torch.no_grad():
        assert teacher_pass.shared_prefix_logps(model, prompt_ids, prompt_mask, completion_ids,
                                                completion_mask).shape == (2, 0)
        logits = teacher_pass.shared_prefix_logits(model, prompt_ids, prompt_mask, completion_ids, completion_mask)
    assert logits.shape == (2, 0, model.config.vocab_size)
