"""Tiny local vision-language models: real HF processors and architectures, built offline.

Two families, both a few hundred thousand parameters:

- LLaVA (`save_tiny_llava`): CLIP vision tower + projector + Llama text model, with a real `LlavaProcessor`
  (`CLIPImageProcessorPil`, the character tokenizer of `tiny.py` plus an `<image>` token, a chat template that
  renders image content blocks). Saved as an HF directory that `AutoProcessor` and
  `AutoModelForImageTextToText` load, and that TRL's `GRPOTrainer` / `RLSDTrainer` train end to end.
- Qwen2-VL (`build_tiny_qwen2_vl`, `qwen2_vl_inputs`): the paper's family (`image_grid_thw`, M-RoPE position
  ids from `mm_token_type_ids`). In transformers 5.24 `Qwen2VLProcessor` needs a video processor, which needs
  torchvision, which does not load against this CPU torch; `build_tiny_qwen2_vl_processor` runs the processor's
  own code with `Qwen2VLImageProcessorPil` and no video processor (one `<|image_pad|>` per merged patch).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from .tiny import CHARACTERS, SPECIAL_TOKENS, build_char_tokenizer

IMAGE_TOKEN = "<image>"
IMAGE_SIZE = 24  # pixels per side: 3 x 3 patches of 8 pixels (one patch per cell of the visual task's grid)
PATCH_SIZE = 8

# ChatML, with content either a string or a list of TRL content blocks ({"type": "image"} / {"type": "text"}).
VLM_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' }}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}{{ '" + IMAGE_TOKEN + "' }}"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}"
    "{{ '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def _tokenizer_with(extra_special: Sequence[str], chat_template: str):
    tokenizer = build_char_tokenizer()
    tokenizer.add_special_tokens({"additional_special_tokens": list(extra_special)})
    tokenizer.chat_template = chat_template
    return tokenizer


def build_tiny_llava_processor():
    """A `LlavaProcessor`: 24x24 CLIP image processor (no torchvision), char tokenizer with `<image>`."""
    from transformers import CLIPImageProcessorPil, LlavaProcessor

    tokenizer = _tokenizer_with([IMAGE_TOKEN], VLM_CHAT_TEMPLATE)
    image_processor = CLIPImageProcessorPil(
        size={"shortest_edge": IMAGE_SIZE}, crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE},
        do_center_crop=True, do_resize=True, do_convert_rgb=True,
    )
    return LlavaProcessor(
        image_processor=image_processor, tokenizer=tokenizer, patch_size=PATCH_SIZE,
        vision_feature_select_strategy="default", num_additional_image_tokens=1,  # CLIP's CLS, dropped by "default"
        image_token=IMAGE_TOKEN, chat_template=VLM_CHAT_TEMPLATE,
    )


def build_tiny_llava(processor, hidden_size: int = 64, num_layers: int = 2, num_heads: int = 4,
                     vision_hidden_size: int = 32, vision_layers: int = 1, seed: int = 0):
    """A randomly initialised `LlavaForConditionalGeneration` (CLIP vision tower + Llama text model)."""
    import torch
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

    tokenizer = processor.tokenizer
    vision = CLIPVisionConfig(
        hidden_size=vision_hidden_size, intermediate_size=2 * vision_hidden_size, num_hidden_layers=vision_layers,
        num_attention_heads=2, image_size=IMAGE_SIZE, patch_size=PATCH_SIZE, projection_dim=vision_hidden_size,
    )
    text = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=hidden_size, intermediate_size=4 * hidden_size,
        num_hidden_layers=num_layers, num_attention_heads=num_heads, num_key_value_heads=num_heads,
        max_position_embeddings=512, tie_word_embeddings=True, pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id, bos_token_id=None,
    )
    config = LlavaConfig(
        vision_config=vision, text_config=text, image_token_id=tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
        vision_feature_select_strategy="default", vision_feature_layer=-1, tie_word_embeddings=True,
    )
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    return model


def save_tiny_llava(path: str | Path, **model_kwargs: Any) -> Path:
    """Build the tiny LLaVA processor + model and save both as one HF directory (Auto* loadable)."""
    path = Path(path)
    processor = build_tiny_llava_processor()
    model = build_tiny_llava(processor, **model_kwargs)
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path


# ---- Qwen2-VL ------------------------------------------------------------------------------------------------------
QWEN_VISION_START, QWEN_IMAGE_PAD, QWEN_VISION_END = "<|vision_start|>", "<|image_pad|>", "<|vision_end|>"
QWEN_CHAT_TEMPLATE = VLM_CHAT_TEMPLATE.replace(
    "'" + IMAGE_TOKEN + "'", "'" + QWEN_VISION_START + QWEN_IMAGE_PAD + QWEN_VISION_END + "'")


def build_tiny_qwen2_vl(seed: int = 0):
    """(model, processor) of a randomly initialised Qwen2-VL with M-RoPE, built from its config."""
    import torch
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration, Qwen2VLImageProcessorPil

    tokenizer = _tokenizer_with([QWEN_VISION_START, QWEN_IMAGE_PAD, QWEN_VISION_END], QWEN_CHAT_TEMPLATE)
    ids = tokenizer.convert_tokens_to_ids([QWEN_VISION_START, QWEN_IMAGE_PAD, QWEN_VISION_END])
    head_dim = 16  # M-RoPE splits head_dim / 2 = 8 rotary frequencies into (temporal, height, width) sections
    config = Qwen2VLConfig(
        text_config=dict(
            vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512, tie_word_embeddings=True,
            rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]},
            pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id, bos_token_id=None,
        ),
        vision_config=dict(depth=1, embed_dim=32, hidden_size=64, num_heads=2, mlp_ratio=2, patch_size=14,
                           spatial_merge_size=2, temporal_patch_size=2, in_channels=3),
        vision_start_token_id=ids[0], image_token_id=ids[1], vision_end_token_id=ids[2],
        tie_word_embeddings=True,
    )
    assert config.text_config.hidden_size // config.text_config.num_attention_heads == head_dim
    torch.manual_seed(seed)
    model = Qwen2VLForConditionalGeneration(config)
    image_processor = Qwen2VLImageProcessorPil(min_pixels=28 * 28, max_pixels=56 * 56, patch_size=14,
                                               merge_size=2, temporal_patch_size=2)
    return model, build_tiny_qwen2_vl_processor(tokenizer, image_processor)


def build_tiny_qwen2_vl_processor(tokenizer, image_processor):
    """`Qwen2VLProcessor`'s own code (placeholder expansion, `mm_token_type_ids`) with no video processor."""
    from transformers import Qwen2VLProcessor

    class ImageOnlyQwen2VLProcessor(Qwen2VLProcessor):
        """Qwen2-VL's processor for images only: transformers 5.24 builds its video processor with
        torchvision, which does not load against this CPU torch build."""

        def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
            super().__init__(image_processor=image_processor, tokenizer=tokenizer, video_processor=None,
                             chat_template=chat_template, **kwargs)

    return ImageOnlyQwen2VLProcessor(image_processor=image_processor, tokenizer=tokenizer,
                                     chat_template=QWEN_CHAT_TEMPLATE)


__all__ = ["IMAGE_TOKEN", "VLM_CHAT_TEMPLATE", "build_tiny_llava_processor", "build_tiny_llava", "save_tiny_llava",
           "build_tiny_qwen2_vl", "build_tiny_qwen2_vl_processor", "CHARACTERS", "SPECIAL_TOKENS"]
