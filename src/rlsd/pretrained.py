"""Load what a run saved: a full model directory or an adapter-only (LoRA) one, causal LM or vision-language model.

A LoRA run directory holds `adapter_config.json` + adapter weights + the tokenizer/processor, and no
`config.json`: `AutoConfig` cannot read it. Its base model is named in `adapter_config.json`
(`base_model_name_or_path`); the base is loaded with the class its own config calls for (a VLM when the
config has a `vision_config`), the adapter applied and, by default, merged into the weights so the result
is a plain `PreTrainedModel` (eval, export and training from it need no peft afterwards).
"""

from __future__ import annotations

import json
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

ADAPTER_CONFIG = "adapter_config.json"


def adapter_base(path: str | os.PathLike) -> str | None:
    """The base model an adapter-only directory was trained on, or None for anything else (hub ids too).

    Raises ValueError (naming the file) when the adapter config is unreadable or names no base model.
    """
    adapter = Path(path) / ADAPTER_CONFIG
    if not adapter.is_file() or (Path(path) / "config.json").is_file():
        return None
    try:
        base = json.loads(adapter.read_text(encoding="utf-8")).get("base_model_name_or_path")
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"{adapter}: not a readable adapter config ({err})") from None
    if not base:
        raise ValueError(f"{adapter}: no base_model_name_or_path; cannot tell which model the adapter belongs to")
    return str(base)


def is_vlm(path: str, **config_kwargs: Any) -> bool:
    """Whether the model directory (or hub id; an adapter dir: its base) is a VLM: its config has a `vision_config`."""
    from transformers import AutoConfig

    while (base := adapter_base(path)) is not None:
        path = base
    return getattr(AutoConfig.from_pretrained(path, **config_kwargs), "vision_config", None) is not None


def model_class(path: str, **config_kwargs: Any):
    """`AutoModelForImageTextToText` for a VLM, else `AutoModelForCausalLM` (an adapter dir: its base's class)."""
    from transformers import AutoModelForCausalLM, AutoModelForImageTextToText

    return AutoModelForImageTextToText if is_vlm(path, **config_kwargs) else AutoModelForCausalLM


def load_processor(path: str | os.PathLike, base: str | None = None, vlm: bool = False) -> Any:
    """The run's own processor (a VLM's, or where one is saved) or tokenizer, else its base model's."""
    from transformers import AutoProcessor, AutoTokenizer

    for source in (str(path), base):
        if source is None:
            continue
        folder = Path(source)
        if (folder / "preprocessor_config.json").is_file() or (folder / "processor_config.json").is_file() \
                or vlm:
            try:
                return AutoProcessor.from_pretrained(source)
            except (OSError, ValueError):
                pass
        try:
            return AutoTokenizer.from_pretrained(source)
        except (OSError, ValueError):
            continue
    raise FileNotFoundError(f"{path}: no tokenizer saved with the model or its base {base!r}")


def load_model(path: str | os.PathLike, *, merge: bool = True, **kwargs: Any) -> Any:
    """The model in `path` (full or adapter-only); an adapter is applied to its base and, with `merge`, merged.

    `kwargs` go to `from_pretrained` (e.g. `dtype`). Without `merge` an adapter comes back as a `PeftModel`.
    """
    path = str(path)
    base = adapter_base(path)
    if base is None:
        return model_class(path).from_pretrained(path, **kwargs)
    try:
        model = load_model(base, **kwargs)  # the base may itself be a LoRA run (merged)
    except OSError as err:
        raise FileNotFoundError(f"{Path(path) / ADAPTER_CONFIG}: cannot load the base model {base!r}: "
                                f"{str(err).splitlines()[0]}") from None
    from peft import PeftModel

    adapted = PeftModel.from_pretrained(model, path)
    if not merge:
        return adapted
    merged = adapted.merge_and_unload()
    # Named after the run, not its base: an adapter trained on top then names this run as its base.
    merged.name_or_path = merged.config._name_or_path = path
    return merged


@contextmanager
def trl_loads_adapter_runs() -> Iterator[None]:
    """While it lasts, TRL's model loading (the policy from a path, the reference model) takes LoRA run dirs too."""
    from trl.trainer import grpo_trainer

    original = grpo_trainer.create_model_from_path

    def create(model_id: str, architecture=None, **kwargs: Any):
        if adapter_base(model_id) is None:
            return original(model_id, architecture, **kwargs)
        kwargs = {"dtype": "float32", **kwargs}  # TRL's default for a path
        return load_model(model_id, **{k: v for k, v in kwargs.items() if k not in ("quantization_config",)})

    grpo_trainer.create_model_from_path = create
    try:
        yield
    finally:
        grpo_trainer.create_model_from_path = original


def load_pretrained(path: str | os.PathLike, **kwargs: Any) -> tuple[Any, Any]:
    """(model, tokenizer) of a causal LM or (model, processor) of a VLM; adapters merged (see `load_model`)."""
    model = load_model(path, **kwargs)
    vlm = getattr(model.config, "vision_config", None) is not None
    return model, load_processor(path, adapter_base(path), vlm=vlm)


__all__ = ["ADAPTER_CONFIG", "adapter_base", "is_vlm", "load_model", "load_pretrained", "load_processor",
           "model_class", "trl_loads_adapter_runs"]
