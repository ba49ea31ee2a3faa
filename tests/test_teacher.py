"""Teacher prompt templates, placement of the privileged text, truncation and leak detection."""

import pytest

from rlsd.teacher import prompts as teacher
from rlsd.config import RLSDConfig

ROW = {"answer": "42", "solution": "6*7=42"}


def test_default_templates_follow_privileged_fields():
    assert "{answer}" in teacher.default_template(["answer"]) and "{solution}" not in teacher.default_template(["answer"])
    both = teacher.default_template(["answer", "solution"])
    assert "{solution}" in both and "{answer}" in both
    custom = teacher.default_template(["rubric"])
    assert "{rubric}" in custom and custom.startswith("{prompt}")


def test_plain_text_prompt_gets_privileged_text_before_the_completion():
    template = "{prompt}\nReference: {solution} => {answer}\n"
    out = teacher.teacher_prompt("Q: 6*7?", ROW, template)
    assert out == "Q: 6*7?\nReference: 6*7=42 => 42\n"


def test_chat_prompt_privileged_text_goes_inside_the_last_user_message():
    prompt = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "first question"},
        {"role": "assistant", "content": "first answer"},
        {"role": "user", "content": "Q: 6*7?"},
    ]
    out = teacher.teacher_prompt(prompt, ROW, teacher.TEMPLATE_SOLUTION_ANSWER)
    assert out[:3] == prompt[:3]
    assert out[3]["role"] == "user"
    assert out[3]["content"].startswith("Q: 6*7?") and "6*7=42" in out[3]["content"]
    assert prompt[3]["content"] == "Q: 6*7?", "the student's prompt must not be modified in place"


def test_chat_prompt_without_user_message_is_rejected():
    with pytest.raises(ValueError, match="user message"):
        teacher.teacher_prompt([{"role": "system", "content": "x"}], ROW, teacher.TEMPLATE_ANSWER)


def test_student_blind_assertion():
    rows = [ROW]
    teacher.assert_student_blind(["Q: 6*7?"], rows, teacher.TEMPLATE_ANSWER)
    leaked = teacher.teacher_prompt("Q: 6*7?", ROW, teacher.TEMPLATE_ANSWER)
    with pytest.raises(RuntimeError, match="privileged text reached the student"):
        teacher.assert_student_blind([leaked], rows, teacher.TEMPLATE_ANSWER)


def test_shorten_privileged_cuts_the_longest_field_first_and_keeps_the_row():
    row = {"prompt": "p", "answer": "42", "solution": "x" * 10}
    out = teacher.shorten_privileged(row, ["answer", "solution"], overflow_chars=4)
    assert out["solution"] == "x" * 6 and out["answer"] == "42" and out["prompt"] == "p"
    assert row["solution"] == "x" * 10


def test_leakage_flags():
    completions = ["By the reference solution, 42", "6*7=42\nAnswer: 42", "42"]
    assert teacher.leakage_flags(completions, ["42"] * 3) == [True, False, False]
    assert teacher.leakage_flags(completions, ["42"] * 3, min_derivation_chars=5) == [True, False, True]


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"algorithm": "ppo"}, "algorithm"),
        ({"rlsd_eps_w": 0.0}, "rlsd_eps_w"),
        ({"rlsd_eps_w": 1.5}, "rlsd_eps_w"),
        ({"rlsd_lambda": 2.0}, "rlsd_lambda"),
        ({"teacher_mode": "frozen"}, "teacher_mode"),
        ({"rlsd_lambda_schedule": "cosine"}, "rlsd_lambda_schedule"),
        ({"teacher_template": "no prompt {answer}"}, "teacher_template"),
        ({"teacher_template": "{prompt} only"}, "teacher_template"),
        ({"teacher_template": "{prompt {answer}"}, "teacher_template"),
        ({"algorithm": "opd"}, "teacher_model"),
        ({"distill_divergence": "tv"}, "distill_divergence"),
        ({"privileged_fields": []}, "privileged_fields"),
    ],
)
def test_bad_config_names_the_field(tmp_path, kwargs, field):
    with pytest.raises(ValueError, match=rf"RLSDConfig\.{field}"):
        RLSDConfig(output_dir=str(tmp_path), report_to=[], **kwargs)


def test_config_defaults_match_spec(tmp_path):
    config = RLSDConfig(output_dir=str(tmp_path), report_to=[])
    assert (config.algorithm, config.rlsd_lambda, config.rlsd_eps_w, config.teacher_mode) == ("rlsd", 1.0, 0.2, "live")
    assert config.privileged_fields == ["answer"] and "{answer}" in config.teacher_template
    assert RLSDConfig(output_dir=str(tmp_path), report_to=[], privileged_fields="answer,solution").privileged_fields == [
        "answer", "solution"]


def test_with_reference_gives_the_teachers_prompt_and_names_a_missing_field():
    import pytest

    from rlsd.teacher.prompts import default_template, teacher_prompt, with_reference

    rows = [{"prompt": [{"role": "user", "content": "Compute 2+3."}], "answer": "5", "solution": "2+3=5"},
            {"prompt": "Compute 1+1.", "answer": "2", "solution": "1+1=2"}]
    shown = with_reference(rows, ["answer", "solution"])
    template = default_template(["answer", "solution"])
    assert [r["prompt"] for r in shown] == [teacher_prompt(r["prompt"], r, template) for r in rows]
    assert "2+3=5" in shown[0]["prompt"][-1]["content"] and shown[0]["answer"] == "5"
    assert rows[0]["prompt"][-1]["content"] == "Compute 2+3."  # the caller's rows are not modified
    with pytest.raises(ValueError, match="row 2 has no value in field 'hint'"):
        with_reference([{**rows[0], "hint": "h"}, rows[1]], ["hint"])
