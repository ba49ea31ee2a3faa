"""Shared-prefix teacher pass: one forward per distinct teacher prompt, its KV cache reused by every completion.

The G completions of a group share one teacher prompt (question + privileged text). The plain pass re-reads it
G times; here each distinct prompt is read once, its key/value cache is indexed out to the rows that need it,
and only `[last prompt token ; completion less its last token]` is run per row. Shapes: B rows, P teacher-prompt
columns (left-padded), T completion columns (right-padded), V vocabulary.

Exactness: the rows keep today's layout (same left padding, same columns), so every token sees the same keys at
the same positions as in `[prompt ; completion]`. The cache holds the prompt's first P - 1 columns; the last
prompt column is fed with the completion so the model's fused log-prob head (TRL's `fused_lm_head`) scores the
completion exactly as the unshared pass does. The completion's last token is not fed: its output would predict
a token after the completion, which nothing scores (causal attention: no earlier position sees it), so each row
runs T columns, not T + 1. With fp32 the two passes agree to ~1e-6.

Where it cannot apply (`share_prefix_blocker` says why), callers run the unshared pass:
- sharded engines (DeepSpeed ZeRO-3, FSDP): every rank must make the same forward calls, and the number of
  distinct prompts differs per rank;
- multimodal rows (pixel values / image fields): the image tokens would need their vision inputs in the prefix;
- models without a plain full-attention `DynamicCache` (sliding-window or linear-attention layers, encoder-decoder,
  custom caches): a sliding cache would drop prompt keys the unshared pass still sees.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Callable
from typing import Any

import torch

from .images import FORWARD_FIELDS, TEACHER_PREFIX

# Batch keys that mean the teacher forward carries vision inputs (the student's, or the teacher prompt's own).
MULTIMODAL_KEYS = (*FORWARD_FIELDS, "image_position_ids", *(TEACHER_PREFIX + k for k in FORWARD_FIELDS))


def _base_model(module: torch.nn.Module) -> torch.nn.Module:
    """The transformers model under DDP/PEFT wrappers (the one whose config and forward signature count)."""
    while hasattr(module, "module") and isinstance(module.module, torch.nn.Module):  # DDP, accelerate wrappers
        module = module.module
    get_base = getattr(module, "get_base_model", None)  # PEFT
    return get_base() if callable(get_base) else module


def _cache_kwarg(model: torch.nn.Module) -> str:
    """transformers >= 5.x calls the cache argument `cache` (`past_key_values` is deprecated); older ones the latter."""
    params = inspect.signature(type(_base_model(model)).forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def _new_cache(model: torch.nn.Module):
    from transformers import DynamicCache

    return DynamicCache(config=_base_model(model).config)


def share_prefix_blocker(model: torch.nn.Module, output: dict[str, Any] | None = None,
                         sharded: bool = False) -> str | None:
    """Why the shared-prefix pass cannot run for `model` on this batch, or None if it can."""
    if sharded:
        return "sharded engine (ZeRO-3/FSDP): every rank must run the same forward calls"
    if output is not None and any(output.get(key) is not None for key in MULTIMODAL_KEYS):
        return "multimodal rows: the prompt's image tokens need their vision inputs"
    base = _base_model(model)
    config = getattr(base, "config", None)
    if config is None or getattr(config, "is_encoder_decoder", False):
        return "not a decoder-only transformers model"
    supports = getattr(base, "_supports_default_dynamic_cache", None)
    if supports is None or not supports():
        return f"{type(base).__name__} has no default DynamicCache"
    try:
        from transformers.cache_utils import DynamicLayer

        layers = getattr(_new_cache(base), "layers", None)
    except Exception as err:  # noqa: BLE001 - any failure to build the cache means: do not share
        return f"cannot build a DynamicCache for {type(base).__name__}: {err}"
    if not layers or any(type(layer) is not DynamicLayer for layer in layers):
        return "the cache is not full attention in every layer (sliding window or linear attention)"
    return None


def unique_prompts(prompt_ids: torch.Tensor, prompt_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Distinct rows of a left-padded prompt batch.

    Args:
        prompt_ids, prompt_mask: (B, P).
    Returns:
        first: (U,) index of each distinct prompt's first row, in order of first appearance.
        inverse: (B,) which distinct prompt each row holds (index into `first`).
    """
    keys: dict[tuple[int, ...], int] = {}
    first, inverse = [], []
    for row, (ids, mask) in enumerate(zip(prompt_ids.tolist(), prompt_mask.tolist(), strict=True)):
        key = tuple(i if m else -1 for i, m in zip(ids, mask, strict=True))
        if key not in keys:
            keys[key] = len(first)
            first.append(row)
        inverse.append(keys[key])
    device = prompt_ids.device
    return torch.tensor(first, dtype=torch.long, device=device), torch.tensor(inverse, dtype=torch.long, device=device)


def _prompt_cache(model, prefix_ids: torch.Tensor, prefix_mask: torch.Tensor, autocast: Callable):
    """KV cache of `prefix_ids` (U, P - 1), or None when the prefix is empty."""
    if prefix_ids.size(1) == 0:
        return None
    cache = _new_cache(model)
    with autocast():
        model(input_ids=prefix_ids, attention_mask=prefix_mask, use_cache=True, logits_to_keep=1,
              **{_cache_kwarg(model): cache})
    return cache


def _rows_of(cache, index: torch.Tensor):
    """A new cache holding rows `index` of `cache` (the original is left as is: each chunk appends its own tokens)."""
    if cache is None:
        return None
    chunk = _new_cache_like(cache)
    chunk.batch_select_indices(index)
    return chunk


def _new_cache_like(cache):
    import copy

    clone = copy.copy(cache)
    clone.layers = [copy.copy(layer) for layer in cache.layers]  # batch_select_indices rebinds, never writes in place
    return clone


def _tail_inputs(prompt_ids, prompt_mask, completion_ids, completion_mask):
    """`[last prompt column ; completion without its last token]`: ids (B, T) and attention mask (B, P + T - 1).

    Output t of the tail predicts completion token t; the last completion token is never an input (see the module
    docstring), so with T >= 1 this is one column less than `[last prompt column ; completion]`.
    """
    tail_ids = torch.cat([prompt_ids[:, -1:], completion_ids[:, :-1]], dim=1)
    attention_mask = torch.cat([prompt_mask, completion_mask[:, :-1]], dim=1)
    return tail_ids, attention_mask


def _blocks(inverse: torch.Tensor, num_prompts: int, batch_size: int) -> list[tuple[list[int], list[int]]]:
    """Group distinct prompts into blocks whose rows fit `batch_size` (a prompt with more rows is its own block)."""
    rows_of = [[] for _ in range(num_prompts)]
    for row, prompt in enumerate(inverse.tolist()):
        rows_of[prompt].append(row)
    blocks, prompts, rows = [], [], []
    for prompt in range(num_prompts):
        if prompts and len(rows) + len(rows_of[prompt]) > batch_size:
            blocks.append((prompts, rows))
            prompts, rows = [], []
        prompts.append(prompt)
        rows.extend(rows_of[prompt])
    if prompts:
        blocks.append((prompts, rows))
    return blocks


def shared_prefix_logps(model, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, completion_ids: torch.Tensor,
                        completion_mask: torch.Tensor, batch_size: int | None = None,
                        autocast: Callable = contextlib.nullcontext) -> torch.Tensor:
    """Log-probs of each completion token under its prompt, reading each distinct prompt once.

    `model` must carry TRL's fused log-prob head (`add_fused_lm_head`, which the trainer's models and teacher copies
    have); its temperature applies, as in `GRPOTrainer._get_per_token_logps_and_entropies`.

    Args:
        prompt_ids, prompt_mask: (B, P) left-padded teacher prompts; equal rows share one prompt forward.
        completion_ids, completion_mask: (B, T) right-padded completions.
        batch_size: most completion rows per forward (memory bound); a block also holds its prompts' cache.
    Returns:
        (B, T) log-probs, 0 where `completion_mask` is 0.
    """
    num_rows, length = completion_ids.shape
    logps = torch.zeros(num_rows, length, dtype=torch.float32, device=completion_ids.device)
    if num_rows == 0 or length == 0:
        return logps
    first, inverse = unique_prompts(prompt_ids, prompt_mask)
    for prompts, rows in _blocks(inverse, first.numel(), batch_size or num_rows):
        prompts_t = torch.tensor(prompts, dtype=torch.long, device=prompt_ids.device)
        block_rows = first[prompts_t]
        cache = _prompt_cache(model, prompt_ids[block_rows, :-1], prompt_mask[block_rows, :-1], autocast)
        # Position of each prompt within this block's cache.
        slot = {prompt: i for i, prompt in enumerate(prompts)}
        for start in range(0, len(rows), batch_size or len(rows)):
            chunk = torch.tensor(rows[start:start + (batch_size or len(rows))], dtype=torch.long,
                                 device=prompt_ids.device)
            slots = torch.tensor([slot[p] for p in inverse[chunk].tolist()], dtype=torch.long, device=chunk.device)
            tail_ids, attention_mask = _tail_inputs(prompt_ids[chunk], prompt_mask[chunk], completion_ids[chunk],
                                                    completion_mask[chunk])
            # Output t scores completion token t: labels already shifted, as TRL's head takes them (`shift_labels`).
            shift_labels = completion_ids[chunk].masked_fill(completion_mask[chunk] == 0, -100)
            with autocast():
                out = model(input_ids=tail_ids, attention_mask=attention_mask, shift_labels=shift_labels,
                            fused_lm_head=True, **{_cache_kwarg(model): _rows_of(cache, slots)})
            logps[chunk] = out.log_probs.float()
    return logps


def shared_prefix_logits(model, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, completion_ids: torch.Tensor,
                         completion_mask: torch.Tensor, autocast: Callable = contextlib.nullcontext) -> torch.Tensor:
    """Next-token logits at each completion position, reading each distinct prompt once (full-vocab distillation).

    Same inputs as `shared_prefix_logps`, one chunk (the caller's micro-batch). Returns (B, T, V) logits, not divided
    by any temperature: `logits[:, t]` predicts `completion_ids[:, t]`, as `module([prompt ; completion])` does.
    """
    first, inverse = unique_prompts(prompt_ids, prompt_mask)
    cache = _prompt_cache(model, prompt_ids[first, :-1], prompt_mask[first, :-1], autocast)
    length = completion_ids.size(1)
    tail_ids, attention_mask = _tail_inputs(prompt_ids, prompt_mask, completion_ids, completion_mask)
    with autocast():
        logits = model(input_ids=tail_ids, attention_mask=attention_mask, logits_to_keep=tail_ids.size(1),
                       **{_cache_kwarg(model): _rows_of(cache, inverse)}).logits
    return logits[:, :length, :]  # T = 0: the tail is the last prompt column alone, which scores nothing


__all__ = ["MULTIMODAL_KEYS", "share_prefix_blocker", "shared_prefix_logits", "shared_prefix_logps",
           "unique_prompts"]
