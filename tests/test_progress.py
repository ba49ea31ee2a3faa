"""The compact progress line: one short line every few steps instead of the Trainer's full log dictionary."""

import io
from types import SimpleNamespace

from rlsd.app.progress import CompactProgressCallback, progress_line


def test_progress_line_shows_what_is_known():
    line = progress_line("rlsd", 20, 100, {"reward": 0.2314, "heldout": 0.35, "teacher": 0.18, "step_time": 0.452})
    assert line == "[rlsd] step 20/100 | reward 0.231 | held-out 0.35 | teacher 18% | 0.45 s/step"
    assert progress_line("grpo", 3, 0, {"reward": 0.5}) == "[grpo] step 3 | reward 0.500"


def test_callback_prints_every_n_steps_with_means_and_waits_for_the_step_line_after_heldout():
    stream = io.StringIO()
    callback = CompactProgressCallback("rlsd", every=2, stream=stream)
    state = SimpleNamespace(global_step=0, max_steps=5, is_world_process_zero=True)
    for step, reward in ((1, 0.1), (2, 0.3), (3, 0.5)):
        state.global_step = step
        if step == 3:
            callback.on_log(None, state, None, logs={"eval/accuracy": 0.4, "eval/step": 3})
        callback.on_log(None, state, None, logs={"reward": reward, "step_time": 1.0, "teacher/time_frac": 0.25,
                                                 "loss": 0.0, "grad_norm": 1.0})
    lines = stream.getvalue().splitlines()
    assert lines == ["[rlsd] step 2/5 | reward 0.200 | teacher 25% | 1.00 s/step",
                     "[rlsd] step 3/5 | reward 0.500 | held-out 0.40 | teacher 25% | 1.00 s/step"]
    assert "grad_norm" not in stream.getvalue()
