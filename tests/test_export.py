"""`rlsd export`: a LoRA run becomes a plain HF model that loads and generates without rlsd or peft."""

import json
import os
import subprocess
import sys

import pytest
import torch
import yaml
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from rlsd.app.cli import main

PROMPT = [{"role": "user", "content": "What is 12+7?"}]

# Runs in a fresh interpreter where `import peft` fails and rlsd is never imported: a plain transformers user.
PLAIN_LOAD = r"""
import json, sys
sys.modules["peft"] = None  # any attempt to import peft raises ImportError
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
path, dtype = sys.argv[1], sys.argv[2]
tokenizer = AutoTokenizer.from_pretrained(path)
model = AutoModelForCausalLM.from_pretrained(path)
assert str(model.dtype) == dtype, model.dtype
inputs = tokenizer.apply_chat_template(json.loads(sys.argv[3]), add_generation_prompt=True, return_tensors="pt",
                                       return_dict=True)
out = model.generate(**inputs, max_new_tokens=12, do_sample=False)
assert not any(m == "rlsd" or m.startswith(("rlsd.", "peft")) for m in sys.modules if sys.modules[m] is not None)
print(json.dumps(out[0, inputs["input_ids"].shape[1]:].tolist()))
"""


@pytest.fixture(scope="module")
def lora_run(tiny_model_dir, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("export")
    rewards = tmp / "my_rewards.py"
    rewards.write_text("def digits(prompts, completions, **kw):\n"
                       "    t = [c[0]['content'] if isinstance(c, list) else c for c in completions]\n"
                       "    return [sum(ch.isdigit() for ch in s) / max(len(s), 1) for s in t]\n")
    config = {"model": tiny_model_dir, "task": "arithmetic", "rewards": [f"{rewards}:digits"], "task_train_size": 16,
              "task_eval_size": 4, "eval_every": 0, "samples_every": 0,
              "lora": {"r": 4, "lora_alpha": 16, "target_modules": ["q_proj", "v_proj", "down_proj"]},
              "training": {"algorithm": "rlsd", "max_steps": 2, "per_device_train_batch_size": 4, "num_generations": 4,
                           "max_completion_length": 8, "learning_rate": 5e-2, "save_strategy": "no", "seed": 0,
                           "report_to": [], "disable_tqdm": True}}
    (tmp / "run.yaml").write_text(yaml.safe_dump(config))
    assert main(["train", "--config", str(tmp / "run.yaml"), "--output-dir", str(tmp / "run")]) == 0
    assert (tmp / "run" / "adapter_config.json").is_file()
    return tmp / "run"


def _plain_generate(path, dtype):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    env.pop("PYTHONPATH", None)  # the exported directory alone, no rlsd sources on the path
    result = subprocess.run([sys.executable, "-c", PLAIN_LOAD, str(path), dtype, json.dumps(PROMPT)],
                            capture_output=True, text=True, timeout=1200, env=env, cwd=path)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_export_of_a_lora_run_loads_with_plain_transformers_and_generates_like_the_adapter(lora_run, tiny_model_dir,
                                                                                            tmp_path):
    from peft import PeftModel

    out = tmp_path / "plain"
    assert main(["export", str(lora_run), "--out", str(out), "--merge-lora"]) == 0
    assert not (out / "adapter_config.json").exists() and (out / "config.json").is_file()
    assert (out / "chat_template.jinja").is_file() or "chat_template" in (out / "tokenizer_config.json").read_text()
    card = (out / "README.md").read_text()
    assert "rlsd" in card and "merged" in card and "AutoModelForCausalLM" in card

    tokenizer = AutoTokenizer.from_pretrained(lora_run)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    base_weights = {k: v.clone() for k, v in base.state_dict().items()}
    adapter_model = PeftModel.from_pretrained(base, str(lora_run)).eval()
    inputs = tokenizer.apply_chat_template(PROMPT, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.no_grad():
        expected = adapter_model.generate(**inputs, max_new_tokens=12, do_sample=False)[0, inputs["input_ids"].shape[1]:]
    assert _plain_generate(out, "torch.float32") == expected.tolist()

    merged = load_file(out / "model.safetensors")
    changed = [k for k in merged if "q_proj" in k and not torch.equal(merged[k], base_weights[k])]
    assert changed, "the adapter's update is in the exported weights (it trained, so they differ from the base)"


def test_export_in_bf16_and_clear_errors(lora_run, tmp_path):
    assert main(["export", str(lora_run), "--out", str(tmp_path / "bf16"), "--merge-lora", "--dtype", "bf16"]) == 0
    merged = load_file(tmp_path / "bf16" / "model.safetensors")
    assert all(v.dtype == torch.bfloat16 for v in merged.values() if v.is_floating_point())
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "bf16")
    assert model.dtype == torch.bfloat16 and model.generate(torch.tensor([[5, 6, 7]]), max_new_tokens=2, min_new_tokens=2).shape[1] == 5
    assert main(["export", str(lora_run), "--out", str(tmp_path / "x")]) == 2  # a LoRA run needs --merge-lora
    assert main(["export", str(lora_run), "--out", str(tmp_path / "y"), "--merge-lora", "--dtype", "int3"]) == 2
    assert main(["export", str(tmp_path / "nothing"), "--out", str(tmp_path / "z")]) == 2
