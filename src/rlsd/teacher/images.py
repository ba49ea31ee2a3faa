"""Images in the teacher pass: the processor's multimodal fields for the teacher's rows.

TRL's `GRPOTrainer` keeps the student's multimodal fields in the generation batch (`pixel_values`,
`image_grid_thw`, `image_sizes`, `pixel_attention_mask`, `token_type_ids`, `mm_token_type_ids`, ... plus the
`num_images` / `num_tiles` bookkeeping) and passes them to `_get_per_token_logps_and_entropies`. The teacher
sees the *same images*, so it reuses the image tensors; only the per-token fields (`token_type_ids`,
`mm_token_type_ids`: one entry per prompt token, M-RoPE reads them) belong to the teacher's own, longer prompt.
This module builds those (`teacher_prompt_inputs`), cuts every field down to a subset of rows
(`select_rows`, used by the zero-advantage skip) and gathers the model keyword arguments (`model_kwargs`).
`images_processed_once` makes the image processor run once per step on the same images: TRL's generation
and scoring calls and the teacher's own processor call all get the one result.
"""

from __future__ import annotations

import hashlib
from contextlib import contextmanager
from typing import Any, Iterator, Sequence

import torch
from transformers import BatchFeature

# Fields indexed by image/patch/tile (not by row); TRL's split_pixel_values_by_grid knows how each is laid out.
IMAGE_FIELDS = ("pixel_values", "image_grid_thw", "image_sizes", "pixel_attention_mask", "spatial_shapes",
                "image_position_ids")
# Fields with one entry per prompt+completion token, row-indexed.
TOKEN_FIELDS = ("token_type_ids", "mm_token_type_ids")
COUNT_FIELDS = ("num_images", "num_tiles")  # bookkeeping TRL's forward uses to slice the image fields
# What `_get_per_token_logps_and_entropies` accepts besides ids/mask.
FORWARD_FIELDS = (*IMAGE_FIELDS, *TOKEN_FIELDS, *COUNT_FIELDS)
TEACHER_PREFIX = "teacher_"  # the teacher's per-token fields live in the batch as teacher_token_type_ids, ...


def row_images(rows: Sequence[dict[str, Any]]) -> list[list[Any] | None] | None:
    """Each row's images in TRL's convention (an `images` list or one `image`), or None for a text-only batch."""
    if "images" in rows[0]:
        images = [row.get("images") for row in rows]
    elif "image" in rows[0]:
        images = [[row["image"]] if row.get("image") is not None else None for row in rows]
    else:
        return None
    return None if all(not imgs for imgs in images) else images


class StepImageCache:
    """Stands in for a processor's `image_processor` for one step: a call on the same images (equal pixels, in
    the same order, however nested) with the same options returns the first call's result instead of running the
    image processor again. Images are compared by content, since TRL deep-copies the prompts (and the images in
    them) before generation; `return_tensors` alone differing, the result is converted, not recomputed."""

    def __init__(self, image_processor):
        self._inner = image_processor
        self._memo: dict[tuple, Any] = {}
        self._alive: list[Any] = []
        self.runs = 0

    def __call__(self, images=None, *args, **kwargs):
        wanted = kwargs.get("return_tensors")
        options = repr(sorted((k, v) for k, v in kwargs.items() if k != "return_tensors"))
        key = (tuple(_image_key(img) for img in _flat_images(images)), repr(args), options)
        if key in self._memo:
            tensors, result = self._memo[key]
            return result if tensors == wanted else BatchFeature(dict(result), tensor_type=wanted)
        result = self._inner(images, *args, **kwargs)
        self._memo[key] = (wanted, result)
        self._alive.append(images)  # identity-keyed images must outlive the step's cache
        self.runs += 1
        return result

    def __getattr__(self, name):
        return getattr(self._inner, name)


def _flat_images(images) -> list[Any]:
    if isinstance(images, (list, tuple)):
        return [img for item in images for img in _flat_images(item)]
    return [] if images is None else [images]


def _image_key(image) -> tuple:
    """A PIL image by its mode, size and pixels (a 128-bit hash); anything else (arrays, paths) by identity."""
    if all(hasattr(image, name) for name in ("tobytes", "mode", "size")):
        return image.mode, tuple(image.size), hashlib.blake2b(image.tobytes(), digest_size=16).digest()
    return "id", id(image)


@contextmanager
def images_processed_once(processor) -> Iterator[StepImageCache | None]:
    """While it lasts, `processor`'s image processor runs once per distinct image list (see `StepImageCache`)."""
    inner = getattr(processor, "image_processor", None)
    if inner is None or isinstance(inner, StepImageCache):
        yield None
        return
    cache = StepImageCache(inner)
    processor.image_processor = cache
    try:
        yield cache
    finally:
        processor.image_processor = inner


def teacher_prompt_inputs(processor, prompts: Sequence[Any], images: Sequence[list[Any] | None],
                          chat_template_kwargs: dict[str, Any] | None = None, tools=None,
                          ) -> tuple[list[list[int]], dict[str, list[torch.Tensor]]]:
    """Teacher prompt token ids and per-token fields, one unpadded entry per row.

    `prompts` are chat prompts (with `{"type": "image"}` blocks or plain strings); the images are placed
    into them as TRL does, the chat template applied, and the processor run on text + images, so each image
    placeholder is expanded to the right number of image tokens (which depends on the image). Inside a training
    step (`images_processed_once`) the image processor's result for these images is the student's, not rerun.
    """
    from trl.data_utils import apply_chat_template, prepare_multimodal_messages

    messages = [prepare_multimodal_messages(p, images=imgs) if imgs else prepare_multimodal_messages(p)
                for p, imgs in zip(prompts, images, strict=True)]
    texts = [apply_chat_template({"prompt": m}, processor, tools=tools, **(chat_template_kwargs or {}))["prompt"]
             for m in messages]
    flat = [img for imgs in images if imgs for img in imgs]
    tokenizer = getattr(processor, "tokenizer", processor)
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    try:
        enc = processor(images=flat or None, text=texts, padding=True, return_tensors="pt")
    finally:
        tokenizer.padding_side = side
    keep = enc["attention_mask"].bool()
    ids = [row[m].tolist() for row, m in zip(enc["input_ids"], keep, strict=True)]
    token_fields = {key: [row[m] for row, m in zip(enc[key], keep, strict=True)] for key in TOKEN_FIELDS if key in enc}
    return ids, token_fields


def pad_token_fields(token_fields: dict[str, list[torch.Tensor]], prompt_width: int, completion_width: int,
                     device) -> dict[str, torch.Tensor]:
    """Left-pad each per-token field to `prompt_width` and add zeros for the completion: (B, P + C) each."""
    out = {}
    for key, rows in token_fields.items():
        padded = torch.zeros((len(rows), prompt_width + completion_width), dtype=torch.long, device=device)
        for i, row in enumerate(rows):
            padded[i, prompt_width - row.numel():prompt_width] = row.to(device)
        out[key] = padded
    return out


def select_rows(fields: dict[str, Any], rows: torch.Tensor) -> dict[str, Any]:
    """The multimodal fields of the rows `rows` (1-D index tensor), in that order.

    Image fields are split per row with TRL's own layout rules (grid, tiles, flat per image, or one per
    row), indexed, and concatenated back; per-token fields and counts are indexed directly.
    """
    from trl.trainer.utils import split_pixel_values_by_grid, unsplit_pixel_values_by_grid

    index = rows.tolist()
    present = {k: v for k, v in fields.items() if k in FORWARD_FIELDS and v is not None}
    if not present:
        return {}
    split = split_pixel_values_by_grid(present)
    out = {}
    for key, value in split.items():
        if isinstance(value, list):
            out[key] = [value[i] for i in index]
        elif key in TOKEN_FIELDS:
            out[key] = value[rows.to(value.device)]
        elif key in IMAGE_FIELDS:
            out[key] = _select_image_field(key, value, split.get("num_images"), index)
        else:
            out[key] = value
    return unsplit_pixel_values_by_grid(out)


def _select_image_field(key: str, value: torch.Tensor, num_images: list[int] | None, index: list[int]) -> torch.Tensor:
    """An image field TRL's split left whole: one entry per image (split by `num_images`) or one per row."""
    if num_images is not None and value.size(0) == sum(num_images):
        per_row = list(torch.split(value, num_images, dim=0))
        return torch.cat([per_row[i] for i in index]) if index else value[:0]
    if num_images is None or value.size(0) == len(num_images):  # padded to one entry per row (e.g. Idefics)
        return value[torch.tensor(index, dtype=torch.long, device=value.device)]
    raise ValueError(f"cannot tell which rows {key!r} of shape {tuple(value.shape)} belongs to "
                     f"(num_images={num_images})")


def model_kwargs(batch: dict[str, Any], token_fields: dict[str, torch.Tensor] | None = None) -> dict[str, Any]:
    """Keyword arguments for a direct `model(...)` call on every row of `batch` (no counts: models take none).

    `token_fields`, when given, replace the batch's per-token fields.
    """
    kwargs = {k: batch[k] for k in IMAGE_FIELDS + TOKEN_FIELDS if batch.get(k) is not None}
    kwargs.update({k: v for k, v in (token_fields or {}).items() if v is not None})
    return kwargs


def teacher_forward_fields(batch: dict[str, Any], prefix: str = TEACHER_PREFIX) -> dict[str, Any]:
    """The multimodal fields of the teacher's forward over every row of `batch`.

    The student's image fields and counts (same images); the teacher prompt's per-token fields stored under
    `<prefix><name>` when the teacher has its own prompt, else the student's (OPD: same prompt).
    """
    fields = {k: batch[k] for k in IMAGE_FIELDS + COUNT_FIELDS if batch.get(k) is not None}
    own = {k: batch[prefix + k] for k in TOKEN_FIELDS if batch.get(prefix + k) is not None}
    fields.update(own or {k: batch[k] for k in TOKEN_FIELDS if batch.get(k) is not None})
    return fields


def has_image_column(dataset) -> bool:
    """Whether a dataset (or a dict of them) has an `image` or `images` column."""
    if dataset is None:
        return False
    datasets = dataset.values() if isinstance(dataset, dict) else [dataset]
    columns = {c for ds in datasets if ds is not None for c in (getattr(ds, "column_names", None) or [])}
    return bool(columns & {"image", "images"})


def reload_renamed_weights(model, checkpoint: str) -> bool:
    """Restore `model` from `checkpoint` when its saved weight names differ from the module's.

    transformers 5 saves some VLMs (LLaVA, Qwen2-VL, ...) under their legacy weight names, while
    `Trainer._load_from_checkpoint` loads the raw state dict with strict=False: on resume every weight is
    silently skipped. `from_pretrained` knows the renaming, so the weights are read through it. Returns
    whether it reloaded (PEFT adapters and sharded engines are left to the Trainer).
    """
    import os

    from safetensors import safe_open

    path = os.path.join(checkpoint, "model.safetensors")
    if not os.path.isfile(path) or not hasattr(model, "config") or hasattr(model, "peft_config"):
        return False
    with safe_open(path, framework="pt") as handle:
        saved = set(handle.keys())
    if saved <= set(model.state_dict()):
        return False
    fresh = type(model).from_pretrained(checkpoint, dtype=next(model.parameters()).dtype)
    model.load_state_dict(fresh.state_dict())
    return True


__all__ = ["row_images", "teacher_prompt_inputs", "pad_token_fields", "select_rows",
           "model_kwargs", "teacher_forward_fields", "has_image_column", "reload_renamed_weights"]
