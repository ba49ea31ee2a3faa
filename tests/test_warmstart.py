"""Warm start on a tiny budget: an ordinary HF directory that a rerun reuses instead of retraining."""

from __future__ import annotations

import json
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from rlsd.tasks.warmstart import RESULT_FILE, load_result, warm_start  # noqa: E402

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
    started = time.perf_counter()
    again = warm_start("arithmetic", out, seed=0, target_accuracy=(0.9, 1.0), **TINY)
    assert again.reused and time.perf_counter() - started < 2.0
    assert again.accuracy == first.accuracy and weights.stat().st_mtime_ns == mtime
    assert load_result(out).accuracy == first.accuracy

    # Different settings (here: the seed) retrain in place.
    other = warm_start("arithmetic", out, seed=1, target_accuracy=(0.9, 1.0), **TINY)
    assert not other.reused and json.loads((out / RESULT_FILE).read_text())["settings"]["seed"] == 1


def test_warm_start_stops_as_soon_as_accuracy_is_in_the_band(tmp_path):
    result = warm_start("countdown", tmp_path / "w", seed=0, target_accuracy=(0.0, 1.0), **TINY)
    assert result.steps == 4 and result.in_band  # the first evaluation is already "in band"
