"""rlsd.data: every format loads, columns are mapped, and every bad row is named before training."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import shutil
import warnings
from pathlib import Path

import datasets
import pytest

from rlsd.data import DatasetError, DatasetReport, DatasetWarning, load_dataset

FIXTURES = Path(__file__).parent / "fixtures" / "data"
ROWS = [
    {"question": "What is 2+2?", "answer": 4, "solution": "2+2=4", "tests": "assert True"},
    {"question": "What is half of 1?", "answer": "1/2", "solution": "", "tests": "assert 1"},
    {"question": "What is 1.5 times 2?", "answer": 3.0, "solution": "3", "tests": "assert 2"},
]
EXPECTED = [
    {"prompt": "What is 2+2?", "answer": "4", "solution": "2+2=4", "tests": "assert True"},
    {"prompt": "What is half of 1?", "answer": "1/2", "solution": "", "tests": "assert 1"},
    {"prompt": "What is 1.5 times 2?", "answer": "3", "solution": "3", "tests": "assert 2"},
]


def fixture(name: str) -> str:
    return str(FIXTURES / name)


def rows_of(ds: datasets.Dataset) -> list[dict]:
    return [{k: row[k] for k in ("prompt", "answer", "solution", "tests")} for row in ds]


# ------------------------------------------------------------------------------------------ formats
def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def write_csv(path: Path, rows: list[dict]) -> Path:
    import csv

    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows({**r, "answer": "3" if r["answer"] == 3.0 else r["answer"]} for r in rows)
    return path


@pytest.mark.parametrize("fmt", ["jsonl", "jsonl.gz", "json", "json-data", "json-lines", "csv", "parquet", "disk"])
def test_every_format_loads_to_the_same_rows(tmp_path, fmt):
    if fmt == "jsonl":
        path = write_jsonl(tmp_path / "d.jsonl", ROWS)
    elif fmt == "jsonl.gz":
        path = tmp_path / "d.jsonl.gz"
        path.write_bytes(gzip.compress("".join(json.dumps(r) + "\n" for r in ROWS).encode()))
    elif fmt == "json":
        path = tmp_path / "d.json"
        path.write_text(json.dumps(ROWS))
    elif fmt == "json-data":
        path = tmp_path / "d.json"
        path.write_text(json.dumps({"data": ROWS}))
    elif fmt == "json-lines":  # a .json file holding one object per line
        path = write_jsonl(tmp_path / "d.json", ROWS)
    elif fmt == "csv":
        path = write_csv(tmp_path / "d.csv", ROWS)
    elif fmt == "parquet":
        path = tmp_path / "d.parquet"
        datasets.Dataset.from_list([{**r, "answer": str(r["answer"])} for r in ROWS]).to_parquet(str(path))
        expected = [{**e, "answer": str(r["answer"])} for e, r in zip(EXPECTED, ROWS)]
    else:
        path = tmp_path / "saved"
        datasets.Dataset.from_list([{**r, "answer": str(r["answer"])} for r in ROWS]).save_to_disk(str(path))
        expected = [{**e, "answer": str(r["answer"])} for e, r in zip(EXPECTED, ROWS)]
    result = load_dataset(path)
    assert list(result) == ["train"]
    assert rows_of(result["train"]) == (expected if fmt in ("parquet", "disk") else EXPECTED)
    assert isinstance(result.report, DatasetReport) and result.report.rows_dropped == 0


def test_saved_dataset_dict_uses_its_test_split_as_eval(tmp_path):
    dd = datasets.DatasetDict(
        train=datasets.Dataset.from_list([{"problem": f"p{i}?", "answer": str(i)} for i in range(4)]),
        test=datasets.Dataset.from_list([{"problem": "q?", "answer": "9"}]),
    )
    dd.save_to_disk(str(tmp_path / "dd"))
    result = load_dataset(tmp_path / "dd")
    assert result["train"].num_rows == 4 and result["eval"][0]["prompt"] == "q?"
    with pytest.raises(DatasetError, match=r"no split 'dev'; splits: train, test"):
        load_dataset(tmp_path / "dd", split="dev")


def test_missing_file_and_unknown_format(tmp_path):
    with pytest.raises(DatasetError, match=r"nope\.jsonl: no such file or directory .*from_hub=True"):
        load_dataset(tmp_path / "nope.jsonl")
    with pytest.raises(DatasetError, match=r"split='test' only applies to saved DatasetDicts"):
        load_dataset(FIXTURES / "good.jsonl", split="test")
    (tmp_path / "d.txt").write_text("hello")
    with pytest.raises(DatasetError, match=r"d\.txt: unknown format '\.txt'; use \.jsonl"):
        load_dataset(tmp_path / "d.txt")


# ------------------------------------------------------------------------------------------ mapping
def test_columns_are_auto_detected_and_other_columns_kept():
    result = load_dataset(fixture("good.jsonl"))
    first = result["train"][0]
    assert first["prompt"] == "What is 2+2?" and first["answer"] == "4" and first["solution"] == "2+2=4"
    assert first["level"] == 1  # extra columns survive for the rewards
    assert "question" not in first and "rationale" not in first  # mapped source columns are not repeated
    assert result.report.columns == {"prompt": "question", "answer": "answer", "solution": "rationale"}
    answers = result["train"]["answer"]
    assert answers[:4] == ["4", "\\frac{1}{2}", "3", "0.5"]  # numbers become strings; 3.0 -> "3"


def test_csv_auto_detects_problem_final_answer_explanation(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("problem,final_answer,explanation,tests\nWhat is 1+2?,3,1+2=3,assert True\n")
    row = load_dataset(path)["train"][0]
    got = (row["prompt"], row["answer"], row["solution"], row["tests"])
    assert got == ("What is 1+2?", "3", "1+2=3", "assert True")


def test_explicit_mapping_overrides_auto_detection(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"prompt": "ignored", "q": "Real question?", "gold": 7, "label": "x"}])
    row = load_dataset(path, prompt_column="q", answer_column="gold")["train"][0]
    assert row["prompt"] == "Real question?" and row["answer"] == "7" and row["label"] == "x"
    with pytest.raises(DatasetError, match=r"d\.jsonl: no column 'missing' \(given as the answer column\)"):
        load_dataset(path, answer_column="missing")


def test_missing_answer_column_is_one_clear_error():
    with pytest.raises(DatasetError) as err:
        load_dataset(fixture("no_answer.csv"))
    message = str(err.value)
    assert "no_answer.csv: no answer column" in message and "columns are question, reply" in message
    assert "--answer-column" in message


def test_system_prompt_and_template_make_chat_prompts(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"question": "2+3?", "answer": "5", "topic": "sums"}])
    row = load_dataset(path, system_prompt="Think step by step.", prompt_template="[{topic}] {prompt} Answer:")
    assert row["train"][0]["prompt"] == [
        {"role": "system", "content": "Think step by step."},
        {"role": "user", "content": "[sums] 2+3? Answer:"},
    ]
    assert load_dataset(path, prompt_template="Q: {prompt}")["train"][0]["prompt"] == "Q: 2+3?"


def test_template_may_not_leak_the_answer_or_use_unknown_columns(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"question": "2+3?", "answer": "5"}])
    with pytest.raises(DatasetError, match="must never see the reference"):
        load_dataset(path, prompt_template="{prompt} (hint: {answer})")
    with pytest.raises(DatasetError, match=r"prompt_template uses \['nope'\] but there is no such column"):
        load_dataset(path, prompt_template="{prompt} {nope}")


def test_chat_prompts_are_kept_and_plain_ones_become_messages():
    train = load_dataset(fixture("chat.jsonl"))["train"]
    assert train[0]["prompt"][0] == {"role": "system", "content": "Be brief."}
    assert train[1]["prompt"] == [{"role": "user", "content": "Plain text 4+4?"}]
    assert train[0]["tests"] is None and train[1]["tests"] == "assert True"


# ---------------------------------------------------------------------------------------- validation
def error_of(*args, **kwargs) -> str:
    with pytest.raises(DatasetError) as err:
        load_dataset(*args, **kwargs)
    return str(err.value)


def test_bad_jsonl_names_file_line_and_field():
    path = fixture("bad.jsonl")
    message = error_of(path, max_prompt_chars=200)
    expected = [
        f"{path}:2: field 'question': empty",
        f"{path}:4: field 'question': expected text or a list of chat messages, got int",
        f"{path}:5: field 'answer': missing",
        f"{path}:6: field 'answer': empty",
        f"{path}:7: invalid JSON",
        f"{path}:8: field 'answer': expected text or a number, got list",
        f"{path}:9: field 'question': 300 characters, over the limit max_prompt_chars=200",
        f"{path}:10: field 'question': message 1 has unknown role 'wizard'",
        f"{path}:11: field 'answer': missing",
    ]
    for line in expected:
        assert line in message, line
    assert message.startswith("9 of 11 rows are invalid; pass skip_bad_rows=True (CLI: --skip-bad-rows)")
    assert f"{path}:1:" not in message and f"{path}:12:" not in message and f"{path}:3:" not in message


def test_non_utf8_bytes_are_named_by_row_and_field():
    path = fixture("non_utf8.jsonl")
    message = error_of(path)
    assert f"{path}:2: field 'question': not valid UTF-8 (byte 0xe9)" in message
    assert f"{path}:3: field 'note': not valid UTF-8 (byte 0xff)" in message
    assert "2 of 3 rows are invalid" in message


def test_bad_csv_uses_data_row_numbers():
    path = fixture("bad.csv")
    message = error_of(path)
    assert f"{path}:2: field 'final_answer': empty" in message
    assert f"{path}:3: has 4 fields, the header has 3" in message
    assert f"{path}:4: field 'final_answer': not valid UTF-8 (byte 0xb5)" in message
    assert "3 of 5 rows are invalid" in message
    with pytest.warns(DatasetWarning):
        kept = load_dataset(path, skip_bad_rows=True)["train"]  # the multi-line quoted row 5 is fine
    assert kept["prompt"] == ["What is 1+2?", "A multi-line\nquestion: 6/2?"]


def test_train_eval_overlap_is_reported_on_the_eval_row():
    train, held = fixture("good.jsonl"), fixture("eval_overlap.jsonl")
    message = error_of(train, eval_path=held)
    assert f"{held}:2: field 'question': same prompt as {train}:1 (train and eval must not overlap)" in message
    with pytest.warns(DatasetWarning, match="dropped 1 of 9 rows"):
        result = load_dataset(train, eval_path=held, skip_bad_rows=True)
    assert result["eval"]["prompt"] == ["What is 9+1?", "What is 8+1?"]


def test_skip_bad_rows_drops_them_with_a_warning_and_a_report():
    path = fixture("bad.jsonl")
    with pytest.warns(DatasetWarning, match=r"dropped 9 of 11 rows as invalid"):
        result = load_dataset(path, max_prompt_chars=200, skip_bad_rows=True)
    assert result["train"]["prompt"] == ["A fine row: 1+1?", "Another fine row: 2+3?"]
    assert result["train"]["answer"] == ["2", "5"]
    report = result.report
    assert (report.rows_total, report.rows_dropped, report.rows_kept) == (11, 9, 2)
    assert any(p.row == 7 and "invalid JSON" in str(p) for p in report.problems)


def test_long_listings_are_cut_but_the_count_is_complete(tmp_path):
    rows = [{"question": "", "answer": "1"} for _ in range(30)] + [{"question": "ok?", "answer": "1"}]
    message = error_of(write_jsonl(tmp_path / "d.jsonl", rows))
    assert message.startswith("30 of 31 rows are invalid")
    assert message.count("field 'question': empty") == 20 and "... and 10 more problems" in message


def test_all_rows_bad_with_skip_is_still_an_error(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"question": "", "answer": "1"}])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DatasetWarning)
        with pytest.raises(DatasetError, match="no usable rows"):
            load_dataset(path, skip_bad_rows=True)


def test_mixed_column_types_are_named(tmp_path):
    rows = [{"question": "a?", "answer": "1", "x": 1}, {"question": "b?", "answer": "2", "x": "s"}]
    path = write_jsonl(tmp_path / "d.jsonl", rows)
    assert "column 'x' mixes types (int, str)" in error_of(path)


def test_bad_options_are_rejected():
    good = fixture("good.jsonl")
    assert "either eval_path or eval_fraction" in error_of(good, eval_path=good, eval_fraction=0.1)
    assert "eval_fraction must be between 0 and 1" in error_of(good, eval_fraction=1.5)


# ------------------------------------------------------------------------------------------ splitting
def test_eval_fraction_holds_out_distinct_prompts_deterministically(tmp_path):
    rows = [{"question": f"What is {i}+1?", "answer": str(i + 1)} for i in range(20)]
    rows += [{"question": "What is 0+1?", "answer": "1"}]  # a repeat stays on one side
    path = write_jsonl(tmp_path / "d.jsonl", rows)
    a = load_dataset(path, eval_fraction=0.25, seed=3)
    b = load_dataset(path, eval_fraction=0.25, seed=3)
    assert a["eval"]["prompt"] == b["eval"]["prompt"] and len(set(a["eval"]["prompt"])) == 5
    assert not set(a["train"]["prompt"]) & set(a["eval"]["prompt"])
    assert a["train"].num_rows + a["eval"].num_rows == 21


# ------------------------------------------------------------------------------------ inputs untouched
def snapshot(root: Path) -> dict[str, tuple[str, float]]:
    return {
        str(p): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime)
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_loading_never_modifies_the_input_files(tmp_path):
    data = tmp_path / "inputs"
    shutil.copytree(FIXTURES, data)
    datasets.Dataset.from_list([{"question": "q?", "answer": "1"}]).save_to_disk(str(data / "saved"))
    before = snapshot(data)
    for name in ("good.jsonl", "chat.jsonl", "saved"):
        loaded = load_dataset(data / name, eval_fraction=None)
        loaded["train"].map(lambda r: {"n": len(str(r["prompt"]))})  # later processing must not write there
    for name in ("bad.jsonl", "non_utf8.jsonl", "bad.csv"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DatasetWarning)
            load_dataset(data / name, skip_bad_rows=True)
    assert snapshot(data) == before
    assert sorted(os.listdir(data)) == sorted(os.listdir(FIXTURES) + ["saved"])


# ------------------------------------------------------------------------------------ chunked reading
def test_jsonl_read_in_many_chunks_gives_the_same_rows_and_problems(tmp_path, monkeypatch):
    """JSONL is parsed in line-aligned chunks (each by Arrow, or by Python where Arrow refuses it): row
    numbers, blank lines, a bad line, types that differ between chunks and new fields must all come out
    exactly as when the file is one chunk."""
    from rlsd.data import jsonl

    lines = [json.dumps({"question": f"q{i}?", "answer": i, "level": i}) for i in range(6)]  # ints first
    lines += ["", "   ", json.dumps({"question": "text answer?", "answer": "1/2", "level": 1.5})]  # then text, float
    lines += ['{"question": "broken', json.dumps({"question": "", "answer": "x"})]
    lines += [json.dumps({"question": f"late {i}?", "answer": "7", "extra": {"k": i}}) for i in range(4)]
    lines += [json.dumps({"question": "date?", "answer": "2020-01-01", "when": "2021-02-03"})]
    path = tmp_path / "d.jsonl"
    path.write_text("\n".join(lines) + "\n")

    def load():
        with pytest.warns(DatasetWarning) as caught:
            result = load_dataset(path, skip_bad_rows=True)
        return result["train"].to_list(), str(caught[0].message), error_of(path)

    whole = load()
    monkeypatch.setattr(jsonl, "CHUNK", 48)  # about one line per chunk
    chunked = load()
    assert chunked == whole
    rows, warning, message = whole
    assert f"{path}:10: invalid JSON" in message and f"{path}:11: field 'question': empty" in message
    assert [r["answer"] for r in rows[:7]] == ["0", "1", "2", "3", "4", "5", "1/2"]
    assert rows[6]["level"] == 1.5 and rows[0]["level"] == 0 and rows[-2]["extra"] == {"k": 3}
    assert rows[-1]["answer"] == "2020-01-01" and rows[-1]["when"] == "2021-02-03"  # text stays text


def test_chat_prompts_are_checked_the_same_by_arrow_and_by_python(tmp_path):
    """A JSONL of chat prompts is checked with Arrow compute; a .json file of the same rows row by row in
    Python: both must name the same rows with the same messages."""
    user = lambda text: {"role": "user", "content": text}  # noqa: E731
    prompts = [
        [user("fine?")],
        [{"role": "wizard", "content": "x"}, user("y")],
        [user("ok"), {"role": "assistant"}],
        [],
        None,
        [{"role": "system", "content": "only a system message"}],
        [user("   ")],
        [{"role": "system", "content": "s"}, user("also fine?")],
    ]
    rows = [{"prompt": p, "answer": "1"} for p in prompts]
    jsonl = write_jsonl(tmp_path / "d.jsonl", rows)
    as_json = tmp_path / "d.json"
    as_json.write_text(json.dumps(rows))
    arrow, python = error_of(jsonl), error_of(as_json)
    assert arrow.replace(str(jsonl), "F") == python.replace(str(as_json), "F")
    expected = [
        ":2: field 'prompt': message 1 has unknown role 'wizard'",
        ":3: field 'prompt': message 2 must be an object with 'role' and 'content'",
        ":4: field 'prompt': empty list of messages",
        ":5: field 'prompt': missing",
        ":6: field 'prompt': no non-empty user message",
        ":7: field 'prompt': no non-empty user message",
    ]
    for line in expected:
        assert f"{jsonl}{line}" in arrow, line
    assert arrow.startswith("6 of 8 rows are invalid")
    with pytest.warns(DatasetWarning):
        kept = load_dataset(jsonl, skip_bad_rows=True)["train"]["prompt"]
    assert [p[-1]["content"] for p in kept] == ["fine?", "also fine?"]


def test_csv_with_bad_rows_gives_the_same_result_from_arrow_and_from_the_csv_module(tmp_path, monkeypatch):
    from rlsd.data import readers

    path = tmp_path / "d.csv"
    path.write_text('question,answer\n"multi\nline 1?",1\nbad row\n\nq3?,3\nq4?,4,extra\n"q,5?",5\nq6?,\n')

    def load():
        with pytest.warns(DatasetWarning) as caught:
            rows = load_dataset(path, skip_bad_rows=True)["train"]["prompt"]
        return rows, str(caught[0].message), error_of(path)

    arrow = load()
    monkeypatch.setattr(readers, "_arrow_csv", lambda *a, **k: None)
    assert load() == arrow
    rows, _, message = arrow
    assert rows == ["multi\nline 1?", "q3?", "q,5?"]
    assert f"{path}:2: has 1 fields, the header has 2" in message and f"{path}:4: has 3 fields" in message
    assert f"{path}:6: field 'answer': empty" in message
