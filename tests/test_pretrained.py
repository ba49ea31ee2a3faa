"""Adapter-only (LoRA) run directories load everywhere a trained run is loaded: eval, export, training from it.

The run directories come from real `rlsd train --lora` runs (2 steps) on the tiny text model and the tiny LLaVA.
"""

import json

import pytest
import torch
import yaml
from peft import PeftModel
from PIL import Image
from transformers import AutoModelForCausalLM, AutoModelForImageTextToText

from rlsd import pretrained
from rlsd.app.cli import main
from rlsd.tasks.tiny_vlm import save_tiny_llava

TRAINING = {"max_steps": 2, "per_device_train_batch_size": 4, "num_generations": 4, "max_completion_length": 8,
            "learning_rate": 5e-2, "save_strategy": "no", "seed": 0, "report_to": [], "disable_tqdm": True}


def _lora_run(tmp, model_dir, task, lora, algorithm="rlsd"):
    rewards = tmp / "my_rewards.py"  # dense, so the 2 steps move the adapter off its zero start
    rewards.write_text("def digits(prompts, completions, **kw):\n"
                       "    t = [c[0]['content'] if isinstance(c, list) else c for c in completions]\n"
                       "    return [sum(ch.isdigit() for ch in s) / max(len(s), 1) for s in t]\n")
    config = {"model": model_dir, "task": task, "rewards": [f"{rewards}:digits"], "task_train_size": 8, "task_eval_size": 4, "eval_every": 0,
              "samples_every": 0, "lora": lora, "training": {"algorithm": algorithm, **TRAINING}}
    (tmp / "run.yaml").write_text(yaml.safe_dump(config))
    assert main(["train", "--config", str(tmp / "run.yaml"), "--output-dir", str(tmp / "run")]) == 0
    run = tmp / "run"
    assert (run / "adapter_config.json").is_file() and not (run / "config.json").exists()
    return run


@pytest.fixture(scope="module")
def text_lora_run(tiny_model_dir, tmp_path_factory):
    return _lora_run(tmp_path_factory.mktemp("text-lora"), tiny_model_dir, "arithmetic",
                     {"r": 4, "lora_alpha": 16, "target_modules": ["q_proj", "v_proj"]})


@pytest.fixture(scope="module")
def vlm_lora_run(tmp_path_factory):
    llava = save_tiny_llava(tmp_path_factory.mktemp("llava"), hidden_size=32, num_layers=2, num_heads=2)
    return _lora_run(tmp_path_factory.mktemp("vlm-lora"), str(llava), "shapes", {"r": 4, "language_only": True})


def _logits(model, vocab=50):
    ids = torch.arange(3, 3 + 12).unsqueeze(0) % vocab
    with torch.no_grad():
        return model(input_ids=ids).logits


@pytest.mark.parametrize("kind", ["text", "vlm"])
def test_loading_an_adapter_run_applies_the_adapter_to_its_base(kind, text_lora_run, vlm_lora_run):
    run = text_lora_run if kind == "text" else vlm_lora_run
    base_dir = pretrained.adapter_base(run)
    auto = AutoModelForCausalLM if kind == "text" else AutoModelForImageTextToText
    model, processor = pretrained.load_pretrained(run)
    assert isinstance(model, auto._model_mapping[type(model.config)]) and not isinstance(model, PeftModel)
    assert (kind == "vlm") == hasattr(processor, "image_processor")
    reference = PeftModel.from_pretrained(auto.from_pretrained(base_dir), str(run)).eval()
    base = auto.from_pretrained(base_dir).eval()
    model.eval()
    assert torch.allclose(_logits(model), _logits(reference), atol=1e-5)
    assert not torch.allclose(_logits(model), _logits(base), atol=1e-4), "the trained adapter changes the model"


def test_rlsd_eval_on_a_text_lora_run_directory(text_lora_run, tmp_path, capsys):
    out = tmp_path / "eval.json"
    assert main(["eval", "--model", str(text_lora_run), "--task", "arithmetic", "--limit", "4",
                 "--max-new-tokens", "8", "--out", str(out)]) == 0
    assert "accuracy" in capsys.readouterr().out
    adapter_records = json.loads(out.read_text())["records"]
    # The same completions as the merged export, which plain transformers loads.
    assert main(["export", str(text_lora_run), "--out", str(tmp_path / "merged"), "--merge-lora"]) == 0
    assert main(["eval", "--model", str(tmp_path / "merged"), "--task", "arithmetic", "--limit", "4",
                 "--max-new-tokens", "8", "--out", str(out)]) == 0
    assert [r["completion"] for r in json.loads(out.read_text())["records"]] == \
        [r["completion"] for r in adapter_records]


def test_rlsd_eval_and_export_on_a_vlm_lora_run_directory(vlm_lora_run, tmp_path, capsys):
    out = tmp_path / "eval.json"
    assert main(["eval", "--model", str(vlm_lora_run), "--task", "shapes", "--limit", "3",
                 "--max-new-tokens", "6", "--out", str(out)]) == 0
    assert "accuracy" in capsys.readouterr().out
    records = json.loads(out.read_text())["records"]
    assert len(records) == 3 and all("<image>" in r["prompt"] for r in records)
    assert main(["export", str(vlm_lora_run), "--out", str(tmp_path / "merged"), "--merge-lora"]) == 0
    exported = AutoModelForImageTextToText.from_pretrained(tmp_path / "merged").eval()
    loaded, _ = pretrained.load_pretrained(vlm_lora_run)
    assert torch.allclose(_logits(exported), _logits(loaded.eval()), atol=1e-5)
    assert (tmp_path / "merged" / "preprocessor_config.json").is_file() or \
        (tmp_path / "merged" / "processor_config.json").is_file()
    # The card's snippet is the VLM one, and it runs as written (with a real image file).
    card = (tmp_path / "merged" / "README.md").read_text()
    assert "pipeline_tag: image-text-to-text" in card and "AutoModelForCausalLM" not in card
    snippet = card.split("```python\n")[1].split("```")[0].replace('"merged"', repr(str(tmp_path / "merged")))
    Image.new("RGB", (32, 32), "red").save(tmp_path / "image.png")
    snippet = snippet.replace('"image.png"', repr(str(tmp_path / "image.png"))).replace("256", "4")
    exec(compile(snippet, "model card", "exec"), {})


@pytest.mark.parametrize("beta", [0.0, 0.04])
def test_training_goes_on_from_a_lora_run_directory(text_lora_run, tmp_path, beta):
    """`model:` naming a LoRA run (e.g. a LoRA warm start) starts from its merged weights; the new adapter names
    that run as its base, so loading it stacks both. With beta > 0 TRL's reference model is that run too."""
    config = {"model": str(text_lora_run), "task": "arithmetic", "task_train_size": 8, "task_eval_size": 4,
              "eval_every": 0, "samples_every": 0, "rewards": [f"{text_lora_run.parent / 'my_rewards.py'}:digits"],
              "training": {"algorithm": "rlsd", **TRAINING, "beta": beta}}
    if beta == 0:
        config["lora"] = {"r": 4, "target_modules": ["q_proj"]}
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(config))
    assert main(["train", "--config", str(tmp_path / "run.yaml"), "--output-dir", str(tmp_path / "run")]) == 0
    run = tmp_path / "run"
    if beta == 0:
        assert pretrained.adapter_base(run) == str(text_lora_run)
        first = pretrained.load_model(text_lora_run).eval()
        stacked = PeftModel.from_pretrained(first, str(run)).eval()
        assert torch.allclose(_logits(pretrained.load_model(run).eval()), _logits(stacked), atol=1e-5)
    else:  # a full fine-tune from the LoRA run: a plain model directory
        assert (run / "config.json").is_file()
    assert main(["eval", "--model", str(run), "--task", "arithmetic", "--limit", "2", "--max-new-tokens", "4"]) == 0


def test_adapter_config_without_a_base_is_one_clear_error(tmp_path):
    (tmp_path / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA"}))
    with pytest.raises(ValueError, match="adapter_config.json: no base_model_name_or_path"):
        pretrained.adapter_base(tmp_path)
    assert main(["eval", "--model", str(tmp_path), "--task", "arithmetic", "--limit", "1"]) == 2
