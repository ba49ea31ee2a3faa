"""`rlsd export RUN_DIR --out DIR [--merge-lora] [--dtype bf16]`: a plain Hugging Face model directory.

The result loads with `AutoModelForCausalLM.from_pretrained(DIR)` (a vision-language model:
`AutoModelForImageTextToText`) and `AutoTokenizer`/`AutoProcessor` alone,
no `rlsd` and no `peft` import, so any inference stack (transformers, vLLM, TGI, llama.cpp converters) takes
it: weights (a LoRA adapter merged into its base model), config, generation config, tokenizer or processor
with its chat template, and a model card saying how the model was trained.

The model comes from the run directory's final save, else from its newest complete `checkpoint-N`.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

from ..pretrained import ADAPTER_CONFIG, adapter_base, load_model, load_processor
from .report import load_saved_config, summarize_run

DTYPES = {"bf16": "bfloat16", "bfloat16": "bfloat16", "fp16": "float16", "float16": "float16",
          "fp32": "float32", "float32": "float32"}


def find_model_dir(run_dir: str | os.PathLike) -> Path:
    """The run's final model (`RUN_DIR` itself) or, for a run stopped early, its newest complete checkpoint."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"run directory not found: {run_dir}")
    if (run_dir / "config.json").is_file() or (run_dir / ADAPTER_CONFIG).is_file():
        return run_dir
    checkpoints = sorted((p for p in run_dir.glob("checkpoint-*") if p.is_dir() and p.name.split("-")[-1].isdigit()
                          and ((p / "config.json").is_file() or (p / ADAPTER_CONFIG).is_file())),
                         key=lambda p: int(p.name.split("-")[-1]))
    if not checkpoints:
        raise FileNotFoundError(f"{run_dir}: no saved model (config.json or {ADAPTER_CONFIG}) in it or in a "
                                f"checkpoint-N folder; was the run trained with `rlsd train`?")
    return checkpoints[-1]


def _load_model(model_dir: Path, merge_lora: bool, dtype):
    base = adapter_base(model_dir)
    if base is None:
        return load_model(model_dir, dtype=dtype or "auto"), None
    if not merge_lora:
        raise ValueError(f"{model_dir} holds a LoRA adapter over {base!r}: pass --merge-lora to fold it into the "
                         f"base weights (a plain model needs no peft to load)")
    return load_model(model_dir, dtype=dtype or "auto"), base


def _run_facts(run_dir: Path) -> dict[str, Any]:
    config = load_saved_config(run_dir)
    summary = summarize_run(run_dir)
    training = config.get("training") if isinstance(config.get("training"), dict) else config
    return {"algorithm": summary.get("algorithm"), "base": config.get("model"), "task": config.get("task"),
            "data": config.get("data"), "steps": summary.get("steps"),
            "final_heldout_accuracy": summary.get("final_heldout_accuracy"), "final_reward": summary.get("final_reward"),
            "learning_rate": (training or {}).get("learning_rate")}


def model_card(facts: dict[str, Any], out_name: str, base: str | None, dtype: str | None, merged: bool,
               vlm: bool = False) -> str:
    algorithm = facts.get("algorithm") or "rlsd"
    pipeline = "image-text-to-text" if vlm else "text-generation"
    tags = list(dict.fromkeys(["rlsd", algorithm, "reinforcement-learning", pipeline]))
    front = ["---", "library_name: transformers", f"pipeline_tag: {pipeline}", "tags:"] + [f"- {t}" for t in tags]
    if base and not os.path.exists(base):
        front.append(f"base_model: {base}")
    front.append("---")
    data = facts.get("task") and f"built-in task `{facts['task']}`" or facts.get("data") and f"`{facts['data']}`" or "—"
    rows = [("algorithm", algorithm), ("base model", base or facts.get("base") or "—"), ("data", data),
            ("training steps", facts.get("steps")), ("LoRA adapter", "merged into the base weights" if merged else "none (full fine-tune)"),
            ("held-out accuracy (last eval)", facts.get("final_heldout_accuracy")),
            ("training reward (last 5 logs)", facts.get("final_reward")), ("weights dtype", dtype or "as trained")]
    table = ["| | |", "| --- | --- |"] + [
        f"| {k} | {v:.3f} |" if isinstance(v, float) else f"| {k} | {'—' if v is None else v} |" for k, v in rows]
    return "\n".join(front + ["", f"# {out_name}", "",
                              f"Trained with rlsd ({algorithm}; RLVR with self-distillation on TRL's GRPOTrainer) and "
                              "exported by `rlsd export` as a plain transformers model: no rlsd or peft needed.", "",
                              *table, "", "## Use", "", *usage_lines(out_name, vlm), ""])


def usage_lines(out_name: str, vlm: bool) -> list[str]:
    """The card's loading snippet: the Auto classes `rlsd.pretrained.model_class` picks for this kind of model."""
    if vlm:
        return ["```python", "from PIL import Image", "from transformers import AutoModelForImageTextToText, AutoProcessor",
                "", f'processor = AutoProcessor.from_pretrained("{out_name}")',
                f'model = AutoModelForImageTextToText.from_pretrained("{out_name}")',
                'messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "..."}]}]',
                "prompt = processor.apply_chat_template(messages, add_generation_prompt=True)",
                'inputs = processor(images=[Image.open("image.png")], text=prompt, return_tensors="pt")',
                "print(processor.decode(model.generate(**inputs, max_new_tokens=256)[0]))", "```"]
    return ["```python", "from transformers import AutoModelForCausalLM, AutoTokenizer", "",
            f'tokenizer = AutoTokenizer.from_pretrained("{out_name}")',
            f'model = AutoModelForCausalLM.from_pretrained("{out_name}")',
            'messages = [{"role": "user", "content": "..."}]',
            "inputs = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors=\"pt\", "
            "return_dict=True)",
            "print(tokenizer.decode(model.generate(**inputs, max_new_tokens=256)[0]))", "```"]


def export(run_dir: str | os.PathLike, out: str | os.PathLike, merge_lora: bool = False,
           dtype: str | None = None) -> Path:
    """Write a plain HF model directory for the run's model; returns `out`."""
    import torch

    run_dir, out = Path(run_dir), Path(out)
    if dtype is not None and dtype not in DTYPES:
        raise ValueError(f"--dtype: expected one of {sorted(DTYPES)}, got {dtype!r}")
    torch_dtype = getattr(torch, DTYPES[dtype]) if dtype else None
    model_dir = find_model_dir(run_dir)
    if out.resolve() in (run_dir.resolve(), model_dir.resolve()):
        raise ValueError(f"--out {out}: choose a new directory, not the run's own model files")
    model, base = _load_model(model_dir, merge_lora, torch_dtype)
    if torch_dtype is not None:
        model = model.to(torch_dtype)
    vlm = getattr(model.config, "vision_config", None) is not None
    processor = load_processor(model_dir, base, vlm=vlm)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    tokenizer = getattr(processor, "tokenizer", processor)
    if getattr(tokenizer, "chat_template", None) is None:
        print(f"rlsd export: note: {model_dir} has no chat template; prompts must be formatted by hand")
    facts = _run_facts(run_dir)
    card = model_card(facts, out.name, base or facts.get("base"), DTYPES.get(dtype or ""), merged=base is not None,
                      vlm=vlm)
    (out / "README.md").write_text(card, encoding="utf-8")
    for extra in ("run_config.json",):  # provenance, not needed to load
        if (run_dir / extra).is_file():
            shutil.copy(run_dir / extra, out / f"rlsd_{extra}")
    return out


__all__ = ["export", "find_model_dir", "model_card"]
