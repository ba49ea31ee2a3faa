"""SDPO and the contrastive teacher on image rows: the re-prompt keeps the row's own images, the wrong reference
comes from another row; 3 training steps on the tiny LLaVA and the tiny Qwen2-VL."""

import pytest
import torch
from conftest import MARKER
from test_vlm import direct_teacher_logps, generation_batch, make_trainer, tiny_llava_dir  # noqa: F401 - fixture

from rlsd.teacher import prompts as teacher


def positional_reward(prompts, completions, **kwargs):
    """Rollouts 0 and 2 of every group of 4 succeed: every row has a peer success that is not itself."""
    return [1.0 if i % 4 in (0, 2) else 0.0 for i in range(len(completions))]


@pytest.mark.parametrize("family", ["llava", "qwen2_vl"])
def test_contrast_scores_each_row_with_its_own_image_under_another_rows_answer(family, tiny_llava_dir, tmp_path):
    trainer = make_trainer(family, tiny_llava_dir, tmp_path, reward=positional_reward, algorithm="rlsd",
                           teacher_contrast="wrong_reference", per_device_train_batch_size=8)
    rows = generation_batch(trainer)
    torch.manual_seed(0)
    trainer.model.train()
    with torch.no_grad():
        batch = trainer._generate_and_score_completions(rows)
    assert batch["contrast_rows"].tolist() == [1.0] * 8
    for i in (1, 6):  # a row of each group: the wrong reference is the other group's answer, the image its own
        partner = rows[4 if i < 4 else 0]
        assert partner["answer"] != rows[i]["answer"]
        length = int(batch["completion_mask"][i].sum())
        completion = batch["completion_ids"][i][:length]
        wrong_row = {**rows[i], "answer": partner["answer"]}
        expected = direct_teacher_logps(trainer, wrong_row, completion)
        torch.testing.assert_close(batch["teacher_wrong_per_token_logps"][i][:length], expected, rtol=1e-4, atol=1e-4)
        own_image_other_answer = direct_teacher_logps(trainer, {**rows[4 if i < 4 else 0], "answer": partner["answer"],
                                                                "prompt": rows[i]["prompt"]}, completion)
        assert not torch.allclose(own_image_other_answer, expected, atol=1e-4), "the row's own image, not the partner's"


@pytest.mark.parametrize("family", ["llava", "qwen2_vl"])
def test_sdpo_teacher_prompt_keeps_the_image_and_shows_a_peer_success(family, tiny_llava_dir, tmp_path):
    trainer = make_trainer(family, tiny_llava_dir, tmp_path, reward=positional_reward, algorithm="sdpo",
                           per_device_train_batch_size=8, distill_divergence="sampled_token")
    rows = generation_batch(trainer)
    torch.manual_seed(0)
    trainer.model.train()
    with torch.no_grad():
        batch = trainer._generate_and_score_completions(rows)
    texts = trainer.teacher_pass.completion_texts(batch)
    ids, mask = trainer._teacher_prompt_tensors(rows, dict(batch))
    image_token = trainer.model.config.image_token_id
    student_images = (batch["prompt_ids"] == image_token).sum(1)
    assert torch.equal((ids == image_token).sum(1), student_images) and student_images.min() > 0
    for i in range(8):
        prompt = trainer.processing_class.decode(ids[i][mask[i].bool()])
        peer = i - i % 4 + (2 if i % 4 == 0 else 0)
        assert "Correct solution:\n\n" + texts[peer] in prompt and rows[i]["prompt"][0]["content"][1]["text"] in prompt
        assert MARKER not in prompt
    if family == "qwen2_vl":  # M-RoPE's per-token field marks exactly the teacher prompt's image tokens
        types = batch["teacher_mm_token_type_ids"][:, :ids.size(1)]
        assert torch.equal(types.bool(), ids == image_token)
    assert (batch["teacher_per_token_logps"] != 0).any()


@pytest.mark.parametrize("family", ["llava", "qwen2_vl"])
@pytest.mark.parametrize(("algorithm", "extra"), [
    ("sdpo", {}),  # full-vocabulary distillation, EMA teacher
    ("sdpo", {"distill_divergence": "sampled_token", "sdpo_lambda": 0.5, "teacher_contrast": "wrong_reference"}),
    ("rlsd", {"teacher_contrast": "wrong_reference"}),
    ("opsd", {"teacher_contrast": "wrong_reference"}),  # the full-vocabulary contrast target with images
])
def test_three_training_steps_with_images(family, algorithm, extra, tiny_llava_dir, tmp_path):
    trainer = make_trainer(family, tiny_llava_dir, tmp_path, reward=positional_reward, algorithm=algorithm,
                           max_steps=3, per_device_train_batch_size=8, **extra)
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.train()
    logs = [e for e in trainer.state.log_history if "loss" in e]
    assert len(logs) == 3 and all(e["loss"] == e["loss"] for e in logs)
    assert all("teacher/time_frac" in e for e in logs)
    if "teacher_contrast" in extra:
        assert all(e["contrast/rows_frac"] == 1.0 and "teacher/contrast_time_frac" in e for e in logs)
    if algorithm == "sdpo":
        assert all(e["sdpo/peer_demo_frac"] == 1.0 for e in logs)
    assert any(not torch.equal(p, before[n]) for n, p in trainer.model.named_parameters()), "weights move"


def test_teacher_prompt_helpers_keep_image_blocks():
    prompt = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is 1+1?"}]}]
    shown = teacher.teacher_prompt(prompt, {"demonstration": "2"}, "{prompt}{demonstration}")
    assert shown[0]["content"][0] == {"type": "image"} and shown[0]["content"][-1]["text"] == "2"


@pytest.mark.parametrize("family", ["llava", "qwen2_vl"])
def test_rlcsd_trains_with_images_under_peer_hints(family, tiny_llava_dir, tmp_path, monkeypatch):
    from rlsd.algorithms import rlcsd

    monkeypatch.setattr(rlcsd, "extract_final_answer", lambda text, **kw: text[:2] or "?")  # every rollout answers
    trainer = make_trainer(family, tiny_llava_dir, tmp_path, reward=positional_reward, algorithm="rlcsd",
                           max_steps=2, per_device_train_batch_size=8, rlcsd_k_max=2)
    rows = generation_batch(trainer)
    torch.manual_seed(0)
    trainer.model.train()
    with torch.no_grad():
        batch = trainer._generate_and_score_completions(rows)
    assert batch["rlcsd_rows"].tolist() == [1.0] * 8 and batch["rlcsd_wrong_valid"].any(1).all()
    image_token = trainer.model.config.image_token_id
    if family == "qwen2_vl":  # each hint prompt's M-RoPE field marks its own image tokens
        assert batch["teacher_wrong_mm_token_type_ids"].bool().sum(1).gt(0).all()
    assert (batch["prompt_ids"] == image_token).sum(1).min() > 0
    trainer.train()
    logs = [e for e in trainer.state.log_history if "loss" in e]
    assert len(logs) == 2 and all(e["rlcsd/valid_row_frac"] == 1.0 for e in logs)
