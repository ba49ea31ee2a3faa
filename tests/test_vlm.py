"""Vision-language models: images reach the teacher pass of every algorithm, on tiny LLaVA and Qwen2-VL models."""

import pytest
import torch
from conftest import MARKER, digit_reward, tiny_config
from datasets import Dataset
from PIL import Image
from transformers import TrainerCallback

from rlsd import RLSDTrainer, register_algorithm
from rlsd.algorithms import RLSD
from rlsd.teacher import prompts as teacher
from rlsd.tasks.tiny_vlm import build_tiny_qwen2_vl, save_tiny_llava
from trainer_helpers import assert_same_update, flag_teacher_weights, update_differs  # noqa: E402


@pytest.fixture(scope="session")
def tiny_llava_dir(tmp_path_factory):
    return str(save_tiny_llava(tmp_path_factory.mktemp("tiny-llava"), hidden_size=32, num_layers=2, num_heads=2))


def image_dataset(n=8, sizes=((24, 24),)):
    """Rows in TRL's image format; every row's image differs, so a mix-up of rows changes the numbers."""
    rows = []
    for i in range(n):
        image = Image.new("RGB", sizes[i % len(sizes)], (25 * i, 200 - 20 * i, (70 * i) % 256))
        image.putpixel((i % 20, 3), (255, 255, 255))
        rows.append({
            "image": image,
            "prompt": [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": f"What is {i}+1?"}]}],
            "answer": f"{MARKER}{i + 1}",
            "solution": f"{i}+1={i + 1}",
        })
    return Dataset.from_list(rows)


def make_trainer(family, llava_dir, tmp_path, dataset=None, reward=digit_reward, **config):
    args = tiny_config(tmp_path, **config)
    if family == "qwen2_vl":  # in memory: its processor cannot be reloaded without torchvision's video processor
        model, processor = build_tiny_qwen2_vl()
        dataset = dataset if dataset is not None else image_dataset(sizes=((28, 28), (56, 28), (28, 42)))
        return RLSDTrainer(model=model, processing_class=processor, reward_funcs=reward, args=args,
                           train_dataset=dataset)
    return RLSDTrainer(model=llava_dir, reward_funcs=reward, args=args,
                       train_dataset=dataset if dataset is not None else image_dataset())


def generation_batch(trainer):
    dataset = trainer.train_dataset
    rows = [dict(dataset[i]) for i in range(trainer.args.per_device_train_batch_size // trainer.num_generations)]
    return [row for row in rows for _ in range(trainer.num_generations)]


def test_tiny_llava_is_a_real_hf_vlm_directory(tiny_llava_dir):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    processor = AutoProcessor.from_pretrained(tiny_llava_dir)
    model = AutoModelForImageTextToText.from_pretrained(tiny_llava_dir)
    assert type(processor).__name__ == "LlavaProcessor" and type(model).__name__ == "LlavaForConditionalGeneration"
    assert 50_000 < model.num_parameters() < 1_000_000
    prompt = image_dataset(1)[0]
    text = processor.apply_chat_template(prompt["prompt"], add_generation_prompt=True, tokenize=False)
    enc = processor(images=[prompt["image"]], text=[text], return_tensors="pt")
    assert (enc["input_ids"] == model.config.image_token_id).sum() == 9  # 3x3 patches, CLS dropped
    assert model(**enc).logits.shape[:2] == enc["input_ids"].shape


@pytest.mark.parametrize("family", ["llava", "qwen2_vl"])
def test_rlsd_with_lambda_zero_equals_grpo_with_images(family, tiny_llava_dir, tmp_path):
    rlsd = make_trainer(family, tiny_llava_dir, tmp_path / "a", algorithm="rlsd", rlsd_lambda=0.0,
                        per_device_train_batch_size=8)
    grpo = make_trainer(family, tiny_llava_dir, tmp_path / "b", dataset=rlsd.train_dataset, algorithm="grpo",
                        per_device_train_batch_size=8)
    grpo.model.load_state_dict(rlsd.model.state_dict())  # qwen2_vl is built per trainer: same weights
    rlsd.model.train()
    torch.manual_seed(0)
    batch = rlsd._generate_and_score_completions(generation_batch(rlsd))
    assert batch["pixel_values"] is not None and batch["advantages"].abs().sum() > 0
    grads_grpo = assert_same_update(rlsd, grpo, batch)
    assert any("vision" in n or "visual" in n for n in grads_grpo), "the image path is part of the update"
    rlsd.args.rlsd_lambda, rlsd.args.rlsd_eps_w = 1.0, 0.5
    assert update_differs(rlsd, batch, grads_grpo)


def direct_teacher_logps(trainer, row, completion):
    """log q(completion | teacher prompt with the row's image), from one plain model call."""
    from trl.data_utils import prepare_multimodal_messages

    processor, model = trainer.processing_class, trainer.model
    messages = prepare_multimodal_messages(teacher.teacher_prompt(row["prompt"], row, trainer.args.teacher_template),
                                           images=[row["image"]])
    text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    enc = processor(images=[row["image"]], text=[text], return_tensors="pt")
    assert MARKER in processor.decode(enc["input_ids"][0])
    prompt_len = enc["input_ids"].size(1)
    kwargs = {k: v for k, v in enc.items() if k not in ("input_ids", "attention_mask")}
    if "mm_token_type_ids" in kwargs:
        kwargs["mm_token_type_ids"] = torch.cat([kwargs["mm_token_type_ids"], torch.zeros_like(completion)[None]], 1)
    ids = torch.cat([enc["input_ids"], completion[None]], dim=1)
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=torch.ones_like(ids), **kwargs).logits[0, prompt_len - 1:-1]
    return torch.log_softmax(logits.float() / trainer.temperature, -1).gather(-1, completion[:, None])[:, 0]


@pytest.mark.parametrize("family", ["llava", "qwen2_vl"])
def test_teacher_logps_equal_a_direct_call_on_teacher_prompt_with_image(family, tiny_llava_dir, tmp_path):
    def reward(prompts, completions, **kwargs):  # the first prompt's group is all-correct: skipped by the teacher
        first = [any("0+1" in (b.get("text") or "") for b in p[-1]["content"]) for p in prompts]
        return [1.0 if f else s for f, s in zip(first, digit_reward(prompts, completions))]

    trainer = make_trainer(family, tiny_llava_dir, tmp_path, reward=reward, algorithm="rlsd",
                           per_device_train_batch_size=8)
    rows = generation_batch(trainer)
    torch.manual_seed(0)
    trainer.model.train()
    with torch.no_grad():
        batch = trainer._generate_and_score_completions(rows)
    zero = batch["advantages"] == 0
    assert zero[:4].all() and not zero[4:].any()

    # The teacher pass again, watched: its forward gets the images of exactly the 4 rows it scores.
    seen = []
    trainer.model.register_forward_pre_hook(
        lambda module, args, kwargs: seen.append((kwargs["input_ids"], kwargs.get("pixel_values"))), with_kwargs=True)
    teacher_ids, teacher_mask = trainer._teacher_prompt_tensors(rows, dict(batch))
    trainer.teacher_pass.logps(teacher_ids, teacher_mask, batch,
                               rows=trainer.algorithm.rows_to_score(trainer.teacher_pass, batch))
    assert len(seen) == 1 and seen[0][0].size(0) == 4
    pixels = seen[0][1]
    assert pixels is not None
    if family == "llava":  # one image per row, in row order: rows 4..7
        processor = trainer.processing_class.image_processor
        expected = processor(images=[rows[i]["image"] for i in range(4, 8)], return_tensors="pt")["pixel_values"]
        torch.testing.assert_close(pixels, expected)

    for i in range(4, 8):
        length = int(batch["completion_mask"][i].sum())
        completion = batch["completion_ids"][i][:length]
        expected = direct_teacher_logps(trainer, rows[i], completion)
        torch.testing.assert_close(batch["teacher_per_token_logps"][i][:length], expected, rtol=1e-4, atol=1e-4)
    assert torch.equal(batch["teacher_per_token_logps"][zero], torch.zeros_like(batch["teacher_per_token_logps"][zero]))


def test_marker_reaches_every_teacher_row_and_no_student_row_with_images(tiny_llava_dir, tmp_path):
    trainer = make_trainer("llava", tiny_llava_dir, tmp_path, algorithm="rlsd", max_steps=1)
    marker_ids = trainer.processing_class.tokenizer(MARKER, add_special_tokens=False)["input_ids"]

    def contains_marker(ids):
        ids = ids.tolist()
        return any(ids[i:i + len(marker_ids)] == marker_ids for i in range(len(ids) - len(marker_ids) + 1))

    calls, in_teacher = [], flag_teacher_weights(trainer)
    trainer.model.register_forward_pre_hook(
        # generate() encodes the images once before prefill and passes them as `mm_encoder_outputs`
        lambda module, args, kwargs: calls.append((in_teacher["on"], kwargs["input_ids"],
                                                   kwargs.get("pixel_values", kwargs.get("mm_encoder_outputs")))),
        with_kwargs=True)
    trainer.train()
    teacher_calls = [(ids, px) for flag, ids, px in calls if flag]
    student_calls = [(ids, px) for flag, ids, px in calls if not flag]
    assert teacher_calls and student_calls
    assert all(isinstance(px, torch.Tensor) and px.size(0) == ids.size(0) for ids, px in teacher_calls)
    # Student forwards: generation's cached decode steps (one new token) are the only ones without the images.
    assert all(px is not None or ids.size(1) == 1 for ids, px in student_calls)
    assert all(contains_marker(row) for ids, _ in teacher_calls for row in ids)
    assert not any(contains_marker(row) for ids, _ in student_calls for row in ids)


@pytest.mark.parametrize(("algorithm", "extra"), [
    ("rlsd", {}), ("rlsd", {"teacher_mode": "ema"}), ("rlsd", {"teacher_mode": "base"}), ("grpo", {}),
    ("opsd", {}), ("opd", {"teacher_model": "SELF"}), ("grpo+opsd", {}),
])
def test_three_training_steps_on_image_rows(algorithm, extra, tiny_llava_dir, tmp_path):
    extra = {k: (tiny_llava_dir if v == "SELF" else v) for k, v in extra.items()}
    trainer = make_trainer("llava", tiny_llava_dir, tmp_path, algorithm=algorithm, max_steps=3, **extra)
    vision_before = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if "vision_tower" in n}
    trainer.train()
    logs = [e for e in trainer.state.log_history if "loss" in e]
    assert len(logs) == 3 and all(e["loss"] == e["loss"] for e in logs)
    changed = [n for n, p in trainer.model.named_parameters() if n in vision_before and not torch.equal(p, vision_before[n])]
    assert changed, "full fine-tuning updates the vision tower too"
    if algorithm != "grpo":
        assert all("teacher/time_frac" in e for e in logs)


def test_qwen2_vl_trains_with_the_teacher_pass(tiny_llava_dir, tmp_path):
    trainer = make_trainer("qwen2_vl", tiny_llava_dir, tmp_path, algorithm="opsd", max_steps=2)
    trainer.train()
    assert len([e for e in trainer.state.log_history if "distill/divergence" in e]) == 2


def test_resume_after_interruption_with_images(tiny_llava_dir, tmp_path):
    from transformers import AutoModelForImageTextToText, TrainerCallback

    class Interrupt(TrainerCallback):  # what GracefulInterruptCallback does on Ctrl-C at step 2
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == 2:
                control.should_save = control.should_training_stop = True

    first = make_trainer("llava", tiny_llava_dir, tmp_path, algorithm="rlsd", teacher_mode="ema", max_steps=4,
                         save_strategy="steps", save_steps=100)
    first.add_callback(Interrupt())
    first.train()
    checkpoint = tmp_path / "out" / "checkpoint-2"
    assert (checkpoint / "rlsd_teacher.pt").exists() and (checkpoint / "processor_config.json").exists()
    second = make_trainer("llava", tiny_llava_dir, tmp_path, algorithm="rlsd", teacher_mode="ema", max_steps=4,
                          save_strategy="steps", save_steps=100)
    weights_at_2 = {n: p.detach().clone() for n, p in AutoModelForImageTextToText.from_pretrained(
        checkpoint).named_parameters()}
    restored = {}
    second.add_callback(type("Watch", (TrainerCallback,), {"on_train_begin": lambda self, args, state, control, **kw:
        restored.update({n: p.detach().clone() for n, p in second.model.named_parameters()})}))
    second.train(resume_from_checkpoint=str(checkpoint))
    assert second.state.global_step == 4
    assert [e["step"] for e in second.state.log_history if "loss" in e] == [1, 2, 3, 4]
    # Every weight (vision tower included) comes back from the checkpoint, not from the initial model.
    assert restored.keys() == weights_at_2.keys()
    for name, value in weights_at_2.items():
        assert torch.equal(restored[name], value), name
    initial = AutoModelForImageTextToText.from_pretrained(tiny_llava_dir)
    assert any(not torch.equal(p, weights_at_2[n]) for n, p in initial.named_parameters())


def test_lora_on_the_language_model_only_freezes_the_vision_tower(tiny_llava_dir, tmp_path):
    from rlsd.app.run import lora_config

    peft_config = lora_config({"r": 4, "language_only": True})
    args = tiny_config(tmp_path, algorithm="rlsd", teacher_mode="ema", max_steps=1)
    trainer = RLSDTrainer(model=tiny_llava_dir, reward_funcs=digit_reward, args=args, train_dataset=image_dataset(),
                          peft_config=peft_config)
    trainable = [n for n, p in trainer.model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n and "language_model" in n for n in trainable)
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if "vision_tower" in n}
    trainer.train()
    assert all(torch.equal(p, before[n]) for n, p in trainer.model.named_parameters() if n in before)


def test_algorithms_without_image_support_are_refused_up_front(tiny_llava_dir, tmp_path):
    class TextOnly(RLSD):  # a plug-in that declares it cannot read images
        name = "text_only_rlsd"
        supports_images = False

    register_algorithm(TextOnly, replace=True)
    with pytest.raises(ValueError, match=r"RLSDConfig\.algorithm='text_only_rlsd' does not support image rows yet "
                                         r"\(train_dataset has an image column\)"):
        make_trainer("llava", tiny_llava_dir, tmp_path, algorithm="text_only_rlsd")


def test_rlsd_eval_on_a_tiny_vlm_over_an_image_jsonl(tiny_llava_dir, tmp_path, capsys):
    import json

    from rlsd.app.cli import main
    from rlsd.tasks import get_task

    rows = get_task("shapes").make_rows(4, seed=0, split="test")
    (tmp_path / "pics").mkdir()
    with open(tmp_path / "eval.jsonl", "w") as handle:
        for i, row in enumerate(rows):
            row["image"].save(tmp_path / "pics" / f"{i}.png")
            question = row["prompt"][0]["content"][1]["text"]
            handle.write(json.dumps({"prompt": [{"role": "user", "content": question}], "image": f"pics/{i}.png",
                                     "answer": row["answer"], "solution": row["solution"]}) + "\n")
    out = tmp_path / "metrics.json"
    for extra in ([], ["--with-reference", "answer,solution"]):
        assert main(["eval", "--model", tiny_llava_dir, "--data", str(tmp_path / "eval.jsonl"), "--k", "2",
                     "--max-new-tokens", "8", "--reward", "exact", "--out", str(out), *extra]) == 0
        printed = capsys.readouterr().out
        assert "accuracy" in printed and "pass@2" in printed
        records = json.loads(out.read_text())["records"]
        assert len(records) == 4 and all("<image>" in r["prompt"] for r in records)
        assert all(("for grading" in r["prompt"]) == bool(extra) for r in records)


def test_teacher_prompt_cut_to_length_keeps_m_rope_fields_aligned_with_image_tokens(tiny_llava_dir, tmp_path):
    dataset = image_dataset(sizes=((28, 28), (56, 28))).map(lambda row: {"solution": row["solution"] + " pad" * 40})
    trainer = make_trainer("qwen2_vl", tiny_llava_dir, tmp_path, dataset=dataset, algorithm="rlsd",
                           per_device_train_batch_size=8, teacher_max_prompt_length=130,
                           privileged_fields=["answer", "solution"])
    rows = generation_batch(trainer)
    torch.manual_seed(0)
    with torch.no_grad():
        batch = trainer._generate_and_score_completions(rows)
    ids, mask = trainer._teacher_prompt_tensors(rows, batch)
    uncut, _ = trainer.teacher_pass.encode_unpadded(
        [teacher.teacher_prompt(r["prompt"], r, trainer.args.teacher_template) for r in rows], [[r["image"]] for r in rows])
    assert min(len(u) for u in uncut) > 130 >= int(mask.sum(1).max()), "the privileged text was cut to fit"
    image_token = trainer.model.config.image_token_id
    token_types = batch["teacher_mm_token_type_ids"][:, :ids.size(1)]
    assert torch.equal(token_types.bool(), ids == image_token), "mm_token_type_ids mark the teacher's image tokens"
    assert torch.equal(batch["teacher_mm_token_type_ids"][:, ids.size(1):].bool(),
                       torch.zeros_like(batch["completion_ids"]).bool())


@pytest.mark.parametrize("family", ["llava", "qwen2_vl"])
def test_the_image_processor_runs_once_per_step(family, tiny_llava_dir, tmp_path, monkeypatch):
    """Generation, TRL's scoring and the teacher's prompt all need the step's images processed: once is enough,
    and the teacher's per-token fields still come out right (the teacher pass runs on them)."""
    trainer = make_trainer(family, tiny_llava_dir, tmp_path, algorithm="rlsd", max_steps=2)
    image_processor = type(trainer.processing_class.image_processor)
    runs, steps = [], []
    original = image_processor.__call__

    def counting(self, *args, **kwargs):
        runs.append(len(steps))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(image_processor, "__call__", counting)

    class Steps(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            steps.append(state.global_step)

    trainer.add_callback(Steps())
    trainer.train()
    logs = [e for e in trainer.state.log_history if "loss" in e]
    assert len(logs) == 2 and all(e["teacher/rows_scored_frac"] >= 0 for e in logs)
    assert [runs.count(step) for step in range(2)] == [1, 1], runs  # one run in each of the 2 steps
