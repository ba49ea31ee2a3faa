"""RLSDTrainer on a tiny local model: equivalence with GRPO, privileged-text isolation, all algorithms end to end."""

import json
import sys

import pytest
import torch
from conftest import MARKER, digit_reward, make_dataset, tiny_config
from transformers import AutoModelForCausalLM

from rlsd import RLSDTrainer
from rlsd.tasks.tiny import build_char_tokenizer, build_tiny_model
from trainer_helpers import assert_same_update, flag_teacher_weights, update_differs

RLSD_METRICS = [
    "rlsd/delta_mean", "rlsd/delta_std", "rlsd/weight_mean", "rlsd/clip_low_frac", "rlsd/clip_high_frac",
    "rlsd/adv_abs_before", "rlsd/adv_abs_after", "rlsd/sign_flips", "rlsd/lambda", "teacher/time_frac",
    "leakage/rate", "accuracy", "reward", "memory/peak_mb", "step_time",
]


def make_trainer(model_dir, tmp_path, dataset=None, **config):
    args = tiny_config(tmp_path, **config)
    return RLSDTrainer(model=model_dir, reward_funcs=digit_reward, args=args,
                       train_dataset=dataset if dataset is not None else make_dataset())


def generation_batch(trainer, dataset):
    """One generation batch the way TRL's sampler lays it out: each prompt repeated num_generations times."""
    rows = [dict(dataset[i]) for i in range(trainer.args.per_device_train_batch_size // trainer.num_generations)]
    return [row for row in rows for _ in range(trainer.num_generations)]


def test_rlsd_with_lambda_zero_equals_grpo_loss_and_gradients(tiny_model_dir, tmp_path):
    dataset = make_dataset()
    rlsd = make_trainer(tiny_model_dir, tmp_path / "a", dataset, algorithm="rlsd", rlsd_lambda=0.0,
                        per_device_train_batch_size=8)
    grpo = make_trainer(tiny_model_dir, tmp_path / "b", dataset, algorithm="grpo", per_device_train_batch_size=8)
    rlsd.model.train()
    torch.manual_seed(0)
    batch = rlsd._generate_and_score_completions(generation_batch(rlsd, dataset))
    assert batch["teacher_per_token_logps"].shape == batch["completion_ids"].shape
    assert batch["advantages"].abs().sum() > 0, "the toy reward must give this batch a learning signal"

    grads_grpo = assert_same_update(rlsd, grpo, batch)

    # The same batch with the teacher switched on changes the update: the test above can fail.
    rlsd.args.rlsd_lambda = 1.0
    rlsd.args.rlsd_eps_w = 0.5
    assert update_differs(rlsd, batch, grads_grpo)


def test_student_never_sees_privileged_tokens_but_teacher_does(tiny_model_dir, tmp_path):
    trainer = make_trainer(tiny_model_dir, tmp_path, algorithm="rlsd", max_steps=1,
                           privileged_fields=["answer", "solution"])
    marker_ids = trainer.processing_class(MARKER, add_special_tokens=False)["input_ids"]

    def contains_marker(ids):
        ids = ids.tolist()
        return any(ids[i:i + len(marker_ids)] == marker_ids for i in range(len(ids) - len(marker_ids) + 1))

    calls = []  # (inside teacher pass?, input_ids, continues a prompt's KV cache?)
    in_teacher = flag_teacher_weights(trainer)
    hook = trainer.model.register_forward_pre_hook(
        lambda module, args, kwargs: calls.append((
            in_teacher["on"], kwargs.get("input_ids", args[0] if args else None),
            _cached_tokens(kwargs.get("cache") or kwargs.get("past_key_values")) > 0)),
        with_kwargs=True)
    trainer.train()
    hook.remove()

    # The shared-prefix teacher pass reads each teacher prompt once, then runs the completions on its KV cache:
    # those continuation calls carry the cache of a prompt forward checked here.
    teacher_calls = [ids for teacher_flag, ids, continues in calls if teacher_flag and not continues]
    student_calls = [ids for teacher_flag, ids, _ in calls if not teacher_flag]  # generation, loss
    assert teacher_calls and student_calls
    assert all(contains_marker(row) for ids in teacher_calls for row in ids), "every teacher row sees r"
    assert not any(contains_marker(row) for ids in student_calls for row in ids), "no student row may see r"


def _cached_tokens(cache) -> int:
    return 0 if cache is None else cache.get_seq_length()


def test_privileged_text_in_the_prompt_column_is_refused(tiny_model_dir, tmp_path):
    dataset = make_dataset().map(lambda row: {"prompt": [{
        "role": "user",
        "content": row["prompt"][0]["content"] + "\n\nThe reference final answer (for grading, do not copy): "
                   + row["answer"]}]})
    trainer = make_trainer(tiny_model_dir, tmp_path, dataset, algorithm="rlsd", max_steps=1)
    with pytest.raises(RuntimeError, match="privileged text reached the student"):
        trainer.train()


@pytest.mark.parametrize(
    ("algorithm", "extra", "expected"),
    [
        ("rlsd", {}, RLSD_METRICS),
        ("rlsd", {"teacher_mode": "ema"}, RLSD_METRICS),
        ("rlsd", {"teacher_mode": "base"}, RLSD_METRICS),
        ("rlsd", {"teacher_mode": "snapshot", "teacher_snapshot_steps": 1}, RLSD_METRICS),
        ("rlsd", {"rlsd_lambda_schedule": "linear_decay"}, RLSD_METRICS),
        ("grpo", {}, ["reward", "accuracy", "step_time"]),
        ("opsd", {}, ["distill/divergence", "teacher/time_frac", "leakage/rate"]),
        ("opsd", {"distill_divergence": "jsd", "opsd_token_clip": 1.0}, ["distill/divergence"]),
        ("opsd", {"distill_divergence": "sampled_token"}, ["distill/sampled_advantage", "teacher/time_frac"]),
        ("opd", {"teacher_model": "TEACHER"}, ["distill/divergence", "teacher/time_frac"]),
    ],
)
def test_short_training_run_logs_metrics(tiny_model_dir, tiny_teacher_dir, tmp_path, algorithm, extra, expected):
    extra = {k: (tiny_teacher_dir if v == "TEACHER" else v) for k, v in extra.items()}
    trainer = make_trainer(tiny_model_dir, tmp_path, algorithm=algorithm, max_steps=3, **extra)
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.train()
    logs = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert len(logs) == 3
    for entry in logs:
        missing = [name for name in expected if name not in entry]
        assert not missing, f"{algorithm}: missing metrics {missing}"
        assert all(v == v for v in entry.values() if isinstance(v, float)), f"NaN in {entry}"
        if algorithm == "rlsd":
            assert entry["rlsd/sign_flips"] == 0
            assert 1 - 0.2 <= entry["rlsd/weight_mean"] <= 1 + 0.2
            assert 0 <= entry["teacher/time_frac"] < 1
    if algorithm == "grpo":
        assert not any(k.startswith(("rlsd/", "teacher/")) for k in logs[0])
    if extra.get("rlsd_lambda_schedule") == "linear_decay":
        assert [e["rlsd/lambda"] for e in logs] == pytest.approx([1.0, 2 / 3, 1 / 3])
    assert any(not torch.equal(before[n], p) for n, p in trainer.model.named_parameters()), "weights must move"


def test_ema_teacher_follows_the_update_rule(tiny_model_dir, tmp_path):
    trainer = make_trainer(tiny_model_dir, tmp_path, algorithm="rlsd", teacher_mode="ema", teacher_ema_rate=0.25,
                           max_steps=1)
    name = "model.layers.0.self_attn.q_proj.weight"
    initial = dict(trainer.model.named_parameters())[name].detach().clone()
    trainer.train()
    student = dict(trainer.model.named_parameters())[name].detach()
    teacher = dict(trainer.teacher.copy.named_parameters())[name].detach()
    torch.testing.assert_close(teacher, 0.75 * initial + 0.25 * student)
    assert not torch.equal(student, initial)


def test_base_teacher_under_lora_disables_adapters_and_ema_uses_a_second_adapter(tiny_model_dir, tmp_path):
    from peft import LoraConfig

    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")
    for mode in ("base", "ema"):
        args = tiny_config(tmp_path / mode, algorithm="rlsd", teacher_mode=mode, max_steps=2, learning_rate=1e-2)
        trainer = RLSDTrainer(model=tiny_model_dir, reward_funcs=digit_reward, args=args,
                              train_dataset=make_dataset(), peft_config=lora)
        assert trainer.teacher.copy is None, "no second copy of the weights under LoRA"
        trainer.train()
        logs = [e for e in trainer.state.log_history if "loss" in e]
        assert all(e["rlsd/sign_flips"] == 0 for e in logs)
        trainable = {n for n, p in trainer.model.named_parameters() if p.requires_grad}
        assert trainable and all(".default." in n for n in trainable), "only the student adapter trains"
        if mode == "ema":
            pairs = trainer.teacher._adapter_pairs
            assert pairs and any(not torch.equal(t, s) for t, s in pairs), "EMA teacher lags the student"


def test_teacher_prompt_is_truncated_from_the_privileged_text(tiny_model_dir, tmp_path):
    dataset = make_dataset().map(lambda row: {"solution": "long " * 60})
    trainer = make_trainer(tiny_model_dir, tmp_path, dataset, algorithm="rlsd", teacher_max_prompt_length=110,
                           privileged_fields=["answer", "solution"])
    trainer.model.train()
    batch = trainer._generate_and_score_completions(generation_batch(trainer, dataset))
    lengths = trainer._teacher_prompt_tensors(generation_batch(trainer, dataset), batch)[1].sum(1)
    assert lengths.max() <= 110
    text = trainer.processing_class.decode(trainer._teacher_prompt_tensors(generation_batch(trainer, dataset), batch)[0][0])
    assert "What is 0+1?" in text and MARKER in text, "the prompt and the short answer survive; the solution is cut"
    assert batch["teacher_per_token_logps"].shape == batch["completion_ids"].shape


def test_missing_reference_column_is_a_clear_error(tiny_model_dir, tmp_path):
    dataset = make_dataset().remove_columns(["answer"])
    with pytest.raises(ValueError, match=r"RLSDConfig\.privileged_fields: train_dataset has no column\(s\) \['answer'\]"):
        make_trainer(tiny_model_dir, tmp_path, dataset, algorithm="rlsd")
    make_trainer(tiny_model_dir, tmp_path, dataset, algorithm="grpo")  # GRPO needs no reference


def test_teacher_with_another_vocabulary_is_refused(tiny_model_dir, tmp_path):
    tokenizer = build_char_tokenizer()
    tokenizer.add_tokens(["<extra-token>"])
    other = tmp_path / "other-teacher"
    build_tiny_model(tokenizer).save_pretrained(other)
    tokenizer.save_pretrained(other)
    with pytest.raises(ValueError, match=r"RLSDConfig\.teacher_model: .* another vocabulary"):
        make_trainer(tiny_model_dir, tmp_path, algorithm="opd", teacher_model=str(other))


def test_ema_teacher_state_is_checkpointed_and_restored(tiny_model_dir, tmp_path):
    trainer = make_trainer(tiny_model_dir, tmp_path, algorithm="rlsd", teacher_mode="ema", max_steps=2,
                           save_strategy="steps", save_steps=2)
    trainer.train()
    checkpoint = tmp_path / "out" / "checkpoint-2"
    assert (checkpoint / "rlsd_teacher.pt").exists()
    fresh = make_trainer(tiny_model_dir, tmp_path / "fresh", algorithm="rlsd", teacher_mode="ema", max_steps=2)
    fresh._load_from_checkpoint(str(checkpoint))
    for (name, a), (_, b) in zip(trainer.teacher.copy.named_parameters(), fresh.teacher.copy.named_parameters()):
        assert torch.equal(a, b), name
    assert json.loads((checkpoint / "trainer_state.json").read_text())["global_step"] == 2
    assert AutoModelForCausalLM.from_pretrained(checkpoint) is not None


def test_a_reward_failing_on_one_sample_does_not_stop_training(tiny_model_dir, tmp_path):
    from rlsd.rewards import robust

    calls = {"n": 0}

    def flaky(prompts, completions, **kwargs):
        # Fails on the whole batch, so the wrapper rescores per sample; then fails on one sample in each batch.
        calls["n"] += 1
        if len(completions) > 1 or calls["n"] % 5 == 2:
            raise ZeroDivisionError("boom")
        return digit_reward(prompts, completions)

    args = tiny_config(tmp_path, algorithm="rlsd", max_steps=2)
    trainer = RLSDTrainer(model=tiny_model_dir, reward_funcs=robust(flaky, name="flaky"), args=args,
                          train_dataset=make_dataset())
    trainer.train()
    logs = [e for e in trainer.state.log_history if "loss" in e]
    assert len(logs) == 2
    assert [e["rewards/errors"] for e in logs] == [1.0, 1.0], "one failed sample per step, counted, not fatal"


def test_teacher_pass_skips_rows_without_signal_and_matches_a_full_pass_elsewhere(tiny_model_dir, tmp_path):
    def reward(prompts, completions, **kwargs):  # the first prompt's group is all-correct: no signal
        text = [p[-1]["content"] for p in prompts]
        return [1.0 if "0+1" in t else s for t, s in zip(text, digit_reward(prompts, completions))]

    dataset = make_dataset()
    args = tiny_config(tmp_path, algorithm="rlsd", per_device_train_batch_size=8)
    trainer = RLSDTrainer(model=tiny_model_dir, reward_funcs=reward, args=args, train_dataset=dataset)
    trainer.model.train()
    rows = generation_batch(trainer, dataset)
    torch.manual_seed(0)
    batch = trainer._generate_and_score_completions(rows)
    zero = batch["advantages"] == 0
    assert zero[:4].all() and not zero[4:].any()
    assert torch.equal(batch["teacher_per_token_logps"][zero], torch.zeros_like(batch["teacher_per_token_logps"][zero]))

    teacher_ids, teacher_mask = trainer._teacher_prompt_tensors(rows, batch)
    with torch.no_grad(), trainer.teacher.activate() as module:
        full, _, _ = trainer._get_per_token_logps_and_entropies(
            module, torch.cat([teacher_ids, batch["completion_ids"]], 1),
            torch.cat([teacher_mask, batch["completion_mask"]], 1), batch["completion_ids"].size(1))
    mask = batch["completion_mask"][~zero].bool()
    torch.testing.assert_close(batch["teacher_per_token_logps"][~zero][mask], full[~zero][mask], rtol=1e-5, atol=1e-5)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the sandbox needs Linux")
def test_sandbox_layers_of_a_code_reward_are_logged(tiny_model_dir, tmp_path):
    from rlsd.rewards.sandbox import SandboxLimits, run_python_tests

    assert run_python_tests("def f():\n    return 1", ["assert f() == 1"], SandboxLimits(timeout_s=30)).passed == 1
    trainer = RLSDTrainer(model=tiny_model_dir, reward_funcs=digit_reward, args=tiny_config(tmp_path, max_steps=1),
                          train_dataset=make_dataset())
    trainer.train()
    logged = trainer.state.log_history[0]
    layers = {k: v for k, v in logged.items() if k.startswith("rewards/sandbox_layers/")}
    assert layers and set(layers.values()) <= {0.0, 1.0}
    assert layers["rewards/sandbox_layers/seccomp"] == 1.0
