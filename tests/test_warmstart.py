"""Warm start on a tiny budget: an ordinary HF directory that a rerun reuses instead of retraining."""

from __future__ import annotations

import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from rlsd.app.warmstart import RESULT_FILE, load_result, warm_start  # noqa: E402

TINY = dict(
    max_steps=6, eval_every=4, num_train_rows=64, num_eval_rows=4, hidden_size=32, num_layers=1, num_heads=2,
    batch_size=8, max_new_tokens=8, warmup_steps=1, progress=False,
)


def test_warm_start_saves_a_loadable_directory_and_reruns_reuse_it(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path / "warm"
    first = warm_start("arithmetic", out, seed=0, target_accuracy=(0.9, 1.0), **TINY)
    assert not first.reused and first.steps == 6  # never reached the band: ran to max_steps
    assert 0.0 <= first.accuracy <= 1.0 and first.in_band == (first.accuracy >= 0.9)
    assert [h["step"] for h in first.history] == [4, 6]  # every 4 steps, and once more at the end
    saved = json.loads((out / RESULT_FILE).read_text())
    assert saved["accuracy"] == first.accuracy and saved["task"] == "arithmetic"

    model = AutoModelForCausalLM.from_pretrained(out)
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert model.num_parameters() == first.num_parameters
    assert tokenizer.padding_side == "left" and tokenizer.eos_token == "<|im_end|>"
    assert tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)

    weights = out / "model.safetensors"
    mtime = weights.stat().st_mtime_ns
    again = warm_start("arithmetic", out, seed=0, target_accuracy=(0.9, 1.0), **TINY)
    assert again.reused  # reused, not retrained: the weights file is untouched (below)
    assert again.accuracy == first.accuracy and weights.stat().st_mtime_ns == mtime
    assert load_result(out).accuracy == first.accuracy

    # Different settings (here: the seed) retrain in place.
    other = warm_start("arithmetic", out, seed=1, target_accuracy=(0.9, 1.0), **TINY)
    assert not other.reused and json.loads((out / RESULT_FILE).read_text())["settings"]["seed"] == 1


def test_warm_start_stops_as_soon_as_accuracy_is_in_the_band(tmp_path):
    result = warm_start("countdown", tmp_path / "w", seed=0, target_accuracy=(0.0, 1.0), **TINY)
    assert result.steps == 4 and result.in_band  # the first evaluation is already "in band"


def test_privileged_fraction_adds_reference_prompts_and_keeps_old_warm_starts_reusable(tmp_path, monkeypatch):
    import pytest
    import trl

    captured = []

    class CapturingSFTTrainer(trl.SFTTrainer):
        def __init__(self, *args, train_dataset=None, **kwargs):
            captured.append(train_dataset)
            super().__init__(*args, train_dataset=train_dataset, **kwargs)

    monkeypatch.setattr(trl, "SFTTrainer", CapturingSFTTrainer)
    result = warm_start("arithmetic", tmp_path / "w", seed=0, target_accuracy=(0.9, 1.0), privileged_fraction=0.5,
                        **TINY)
    rows = captured[0]
    assert len(rows) == 64 + 32  # every row plain, half of them again with the reference in the prompt
    with_reference = [r for r in rows if "A reference solution" in r["prompt"]]
    assert len(with_reference) == 32
    for r in with_reference:  # the prompt carries the very solution the completion writes
        assert r["completion"].removesuffix("<|im_end|>") in r["prompt"]
        assert r["prompt"].endswith("<|im_start|>assistant\n")  # the reference sits inside the user turn
    assert result.settings["privileged_fraction"] == 0.5

    plain = warm_start("arithmetic", tmp_path / "p", seed=0, target_accuracy=(0.9, 1.0), **TINY)
    assert "privileged_fraction" not in plain.settings  # settings of existing warm starts are unchanged
    assert not any("A reference solution" in r["prompt"] for r in captured[-1])
    with pytest.raises(ValueError, match="privileged_fraction"):
        warm_start("arithmetic", tmp_path / "x", privileged_fraction=1.5, **TINY)


def test_fixed_steps_warm_start_is_reproducible_and_the_time_cap_warns(tmp_path, capsys):
    """Reproducible mode: exactly fixed_steps steps, deterministic kernels, one thread, length-grouped batches."""
    import torch
    from transformers import AutoModelForCausalLM

    settings = dict(seed=0, fixed_steps=6, num_threads=1, deterministic=True, group_by_length=True,
                    privileged_fraction=0.5, **{k: v for k, v in TINY.items() if k != "max_steps"})
    first = warm_start("arithmetic", tmp_path / "a", **settings)
    second = warm_start("arithmetic", tmp_path / "b", **settings)
    assert first.steps == second.steps == 6 and not first.capped
    assert [h["step"] for h in first.history] == [6], "one evaluation, at the end"
    weights = [AutoModelForCausalLM.from_pretrained(tmp_path / d).state_dict() for d in ("a", "b")]
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0]), "same command, same checkpoint"
    assert not torch.are_deterministic_algorithms_enabled(), "the global flag is restored"

    capped = warm_start("arithmetic", tmp_path / "c", **{**settings, "fixed_steps": 500, "time_budget_s": 0.0})
    assert capped.capped and capped.steps < 500
    assert "NOT the reproducible one" in capsys.readouterr().out
    band = warm_start("arithmetic", tmp_path / "d", **{**settings, "fixed_steps": None, "max_steps": 50,
                                                       "target_accuracy": (0.9, 1.0), "time_budget_s": 0.0})
    assert band.capped and "NOT the reproducible one" in capsys.readouterr().out


def test_recorded_settings_retrain_the_same_checkpoint(tmp_path):
    """A warm start's `warmstart.json` is its recipe: `recorded_arguments` of it retrains the same weights (same
    thread count, same kind of CPU), and the new record equals the old one but for where and when it ran."""
    import pytest
    import torch
    from transformers import AutoModelForCausalLM

    from rlsd.app.warmstart import FORMAT_VERSION, recorded_arguments

    first = warm_start("arithmetic", tmp_path / "a", seed=3, fixed_steps=5, num_threads=1, deterministic=True,
                       privileged_fraction=0.5, **{k: v for k, v in TINY.items() if k != "max_steps"})
    recorded = load_result(tmp_path / "a")
    assert recorded.settings == first.settings and recorded.machine["threads"] == 1 and recorded.machine["torch"]
    again = warm_start(recorded.task, tmp_path / "b", progress=False, **recorded_arguments(recorded.settings))
    assert not again.reused and again.settings == recorded.settings
    assert (again.accuracy, again.steps) == (recorded.accuracy, recorded.steps)
    weights = [AutoModelForCausalLM.from_pretrained(tmp_path / d).state_dict() for d in ("a", "b")]
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
    with pytest.raises(ValueError, match="format version"):
        recorded_arguments({**recorded.settings, "version": FORMAT_VERSION + 1})


def test_a_moved_warm_start_loads_from_where_it_is_and_keeps_new_facts(tmp_path):
    import shutil

    from rlsd.app.warmstart import save_result

    warm_start("arithmetic", tmp_path / "a", seed=0, target_accuracy=(0.9, 1.0), **TINY)
    shutil.copytree(tmp_path / "a", tmp_path / "moved")
    moved = load_result(tmp_path / "moved")
    assert moved.output_dir == str(tmp_path / "moved") and moved.accuracy_with_reference is None
    moved.accuracy_with_reference = 0.75
    save_result(moved)
    assert load_result(tmp_path / "moved").accuracy_with_reference == 0.75
    assert load_result(tmp_path / "a").accuracy_with_reference is None


def test_sft_never_truncates_a_worked_solution():
    """Chain rows with the reference in the prompt run past the short-task cap of 256 tokens: the cap rises to the
    longest example (TRL would cut the solution off a longer one); short tasks keep 256."""
    from rlsd.app.warmstart import sft_max_length
    from rlsd.app.evaluate import render_prompt
    from rlsd.tasks import get_task
    from rlsd.tasks.tiny import build_char_tokenizer
    from rlsd.teacher import with_reference

    tokenizer = build_char_tokenizer()

    def examples(task):
        rows = get_task(task).make_rows(200, 0)
        rows += with_reference(rows[:100], ("answer", "solution"))
        return [{"prompt": render_prompt(r["prompt"], tokenizer), "completion": r["solution"] + tokenizer.eos_token}
                for r in rows]

    chain = examples("chain")
    longest = max(len(tokenizer(e["prompt"] + e["completion"], add_special_tokens=False)["input_ids"]) for e in chain)
    assert longest > 256 and sft_max_length(chain, tokenizer, max_new_tokens=96) == longest
    assert sft_max_length(examples("arithmetic"), tokenizer, max_new_tokens=96) == 256
