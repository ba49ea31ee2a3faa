"""A user's own method in one file: loading errors, training through `rlsd train` and `rlsd compare`, inspect."""

import json
from pathlib import Path

import pytest
import torch
from conftest import make_dataset, tiny_config

from rlsd import RLSDConfig, RLSDTrainer
from rlsd.algorithms import get_algorithm
from rlsd.app.cli import main
from test_cli import write_config
from test_trainer import generation_batch

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "negative_only_rlsd.py"
SPEC = f"{EXAMPLE}:NegativeOnlyRLSD"


def config_error(algorithm: str) -> str:
    with pytest.raises(ValueError) as err:
        RLSDConfig(output_dir="/tmp/unused", algorithm=algorithm)
    message = str(err.value)
    assert "\n" not in message, "one line"
    return message


def test_bad_specs_are_one_line_errors_naming_the_spec(tmp_path):
    assert config_error("no/such/file.py:Method") == "RLSDConfig.algorithm: algorithm 'no/such/file.py:Method': " \
                                                     "file 'no/such/file.py' does not exist"
    assert "has no 'Missing'" in config_error(f"{EXAMPLE}:Missing")
    assert "cannot import module 'no_such_module_xyz'" in config_error("no_such_module_xyz:Method")

    broken = tmp_path / "broken.py"
    broken.write_text("def oops(:\n")
    assert "importing" in config_error(f"{broken}:Method") and "SyntaxError" in config_error(f"{broken}:Method")

    lazy = tmp_path / "lazy.py"
    lazy.write_text("from rlsd.algorithms import Algorithm\n\nclass Lazy(Algorithm):\n    name = 'lazy'\n\n"
                    "class NotOne:\n    pass\n")
    assert config_error(f"{lazy}:Lazy").endswith("Lazy defines neither token_advantages() nor loss(); an algorithm "
                                                 "must say how it changes the update (see docs/new-method.md)")
    assert config_error(f"{lazy}:NotOne").endswith("NotOne is not a subclass of rlsd.algorithms.Algorithm")

    clash = tmp_path / "clash.py"
    clash.write_text("from rlsd.algorithms import RLSD\n\nclass Mine(RLSD):\n    name = 'grpo'\n")
    assert config_error(f"{clash}:Mine") == ("RLSDConfig.algorithm: register_algorithm: the name 'grpo' is already "
                                             "taken by rlsd.algorithms.grpo.GRPO; rename Mine.name or pass "
                                             "replace=True")


def test_module_colon_class_and_a_nameless_class(tmp_path, monkeypatch):
    (tmp_path / "my_methods.py").write_text(
        "from rlsd.algorithms import RLSD\n\nclass Nameless(RLSD):\n    name = ''\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    cls = get_algorithm("my_methods:Nameless")
    assert cls.__name__ == "Nameless" and cls.name == "my_methods:Nameless", "registered under its spec"
    assert RLSDConfig(output_dir=str(tmp_path), algorithm="my_methods:Nameless").uses_privileged_teacher


def test_the_example_equals_the_built_in_negative_only_option(tiny_model_dir, tmp_path):
    dataset = make_dataset()
    # (A config made after the trainer would reset accelerate's state under it: build it first.)
    builtin = get_algorithm("rlsd")(RLSDConfig(output_dir=str(tmp_path / "b"), rlsd_lambda=0.7,
                                               rlsd_negative_only=True))
    torch.manual_seed(0)
    trainer = RLSDTrainer(model=tiny_model_dir, reward_funcs=_half_right,
                          args=tiny_config(tmp_path / "plug", per_device_train_batch_size=8, algorithm=SPEC,
                                           rlsd_lambda=0.7),
                          train_dataset=dataset)
    trainer.model.train()
    rows = generation_batch(trainer, dataset)
    batch = trainer._generate_and_score_completions(rows)
    advantages = batch["advantages"]
    assert (advantages > 0).any() and (advantages < 0).any()
    scored = batch["teacher_per_token_logps"].abs().sum(1) > 0
    assert torch.equal(scored, advantages < 0), "the plug-in's teacher scores the wrong rollouts only"
    old = torch.randn(batch["completion_ids"].shape)
    plug = trainer.algorithm.token_advantages(trainer.teacher_pass, batch, old)

    assert torch.equal(builtin.rows_to_score(trainer.teacher_pass, batch), advantages < 0)
    expected = builtin.token_advantages(trainer.teacher_pass, batch, old)
    assert torch.equal(plug, expected)
    mask = batch["completion_mask"].bool()
    right = advantages > 0
    assert torch.equal(plug[right], (advantages.unsqueeze(1) * mask)[right]), "correct rollouts keep GRPO's A"
    wrong = (advantages < 0).unsqueeze(1) & mask
    assert not torch.equal(plug[wrong], advantages.unsqueeze(1).expand_as(plug)[wrong]), "blame is reshaped"


def _half_right(prompts, completions, **kwargs):
    return [float(i % 2) for i in range(len(completions))]


def test_the_example_trains_through_rlsd_train_and_inspect(tiny_model_dir, tmp_path):
    config = write_config(tmp_path / "run.yaml", tiny_model_dir, max_steps=2)
    out = tmp_path / "run"
    assert main(["train", "--config", str(config), "--set", f"algorithm={SPEC}", "--output-dir", str(out)]) == 0
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert any("negative_only/wrong_rows_frac" in r for r in records)
    assert json.loads((out / "run_config.json").read_text())["algorithm"] == "negative_only_rlsd"
    credit = [json.loads(line) for line in (out / "credit.jsonl").read_text().splitlines()]
    assert credit and {r["algorithm"] for r in credit} == {"negative_only_rlsd"}
    assert all("token_advantage" in c["signals"] for r in credit for c in r["completions"] if c["signals"])
    page = tmp_path / "page.html"
    assert main(["inspect", str(out), "--out", str(page)]) == 0 and "token_advantage" in page.read_text()


def test_the_example_runs_beside_built_ins_in_rlsd_compare(tiny_model_dir, tmp_path):
    config = write_config(tmp_path / "run.yaml", tiny_model_dir, max_steps=1)
    out = tmp_path / "cmp"
    assert main(["compare", "--config", str(config), "--algorithms", f"grpo,{SPEC}", "--output-dir", str(out)]) == 0
    summary = json.loads((out / "report" / "summary.json").read_text())
    assert [row["run"] for row in summary] == ["grpo", "negative_only_rlsd"]
    assert (out / "negative_only_rlsd" / "metrics.jsonl").is_file()
