"""GPU check for the paper's model family: RLSD, GRPO and OPSD on a Qwen3-VL-architecture model with its real processor.

Builds everything locally (no download): a randomly initialised Qwen3-VL model (M-RoPE, `image_grid_thw`,
deepstack vision features) and a real `Qwen3VLProcessor` (image processor, video processor, tokenizer with the
vision special tokens, chat template), saves both as an HF directory and reloads them with `AutoProcessor` /
`AutoModelForImageTextToText`, then trains a few steps of each algorithm in bf16 on image rows and prints step
time, peak GPU memory and the teacher's share of a step, as ratios to GRPO measured in the same run.

    python benchmarks/gpu_check_vlm.py --out results/gpu-vlm          # one GPU, ~2-3 minutes
    python benchmarks/gpu_check_vlm.py --smoke --out /tmp/vlm-smoke    # CPU, tiny model, image-only processor

The video processor needs torchvision; where torchvision does not load (this project's CPU CI), `--smoke` uses
the processor's own code without it (`rlsd.tasks.tiny_vlm.build_tiny_qwen2_vl_processor`'s approach).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

import torch
from datasets import Dataset
from PIL import Image, ImageDraw

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from rlsd import RLSDConfig, RLSDTrainer  # noqa: E402
from rlsd.tasks.tiny_vlm import QWEN_CHAT_TEMPLATE, QWEN_IMAGE_PAD, QWEN_VISION_END, QWEN_VISION_START, _tokenizer_with  # noqa: E402

COLOURS = {"red": (220, 40, 40), "blue": (40, 70, 220), "green": (40, 170, 60)}


def visual_rows(n: int, seed: int, size: int) -> list[dict]:
    """Count the squares of one colour and add a number from the text: needs the image and two steps."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        image = Image.new("RGB", (size, size), (255, 255, 255))
        draw = ImageDraw.Draw(image)
        counts = {name: 0 for name in COLOURS}
        cell = size // 4
        for slot in rng.sample(range(16), rng.randint(2, 7)):
            name = rng.choice(list(COLOURS))
            counts[name] += 1
            x, y = (slot % 4) * cell, (slot // 4) * cell
            draw.rectangle([x + 2, y + 2, x + cell - 3, y + cell - 3], fill=COLOURS[name])
        colour, add = rng.choice(list(COLOURS)), rng.randint(1, 9)
        answer = counts[colour] + add
        rows.append({
            "image": image,
            "prompt": [{"role": "user", "content": [
                {"type": "image"},
                {"type": "text", "text": f"Count the {colour} squares, then add {add}. Answer as 'Answer: N'."}]}],
            "answer": str(answer),
            "solution": f"{counts[colour]} {colour} squares; {counts[colour]}+{add}={answer}",
        })
    return rows


def answer_reward(prompts, completions, answer, **kwargs):
    texts = [c[0]["content"] if isinstance(c, list) else c for c in completions]
    return [float(f"Answer: {a}" in t) + 0.1 * sum(ch.isdigit() for ch in t) / max(len(t), 1)
            for t, a in zip(texts, answer, strict=True)]


def build_processor(out: Path, smoke: bool):
    from transformers import AutoProcessor, Qwen2VLImageProcessor, Qwen2VLImageProcessorPil, Qwen3VLProcessor

    tokenizer = _tokenizer_with([QWEN_VISION_START, QWEN_IMAGE_PAD, QWEN_VISION_END], QWEN_CHAT_TEMPLATE)
    pixels = dict(min_pixels=32 * 32, max_pixels=(64 if smoke else 448) ** 2, patch_size=16, merge_size=2,
                  temporal_patch_size=2)
    if smoke:  # no torchvision: the processor's own code without a video processor
        class ImageOnlyQwen3VLProcessor(Qwen3VLProcessor):
            def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
                super().__init__(image_processor=image_processor, tokenizer=tokenizer, video_processor=None,
                                 chat_template=chat_template, **kwargs)

        return ImageOnlyQwen3VLProcessor(image_processor=Qwen2VLImageProcessorPil(**pixels), tokenizer=tokenizer,
                                         chat_template=QWEN_CHAT_TEMPLATE), "image-only (no torchvision)"
    from transformers import Qwen3VLVideoProcessor

    processor = Qwen3VLProcessor(image_processor=Qwen2VLImageProcessor(**pixels), tokenizer=tokenizer,
                                 video_processor=Qwen3VLVideoProcessor(), chat_template=QWEN_CHAT_TEMPLATE)
    processor.save_pretrained(out)
    reloaded = AutoProcessor.from_pretrained(out)
    return reloaded, f"{type(reloaded).__name__} via AutoProcessor (video processor: {type(reloaded.video_processor).__name__})"


def build_model(processor, out: Path, smoke: bool, dtype):
    from transformers import AutoModelForImageTextToText, Qwen3VLConfig, Qwen3VLForConditionalGeneration

    tokenizer = processor.tokenizer
    ids = tokenizer.convert_tokens_to_ids([QWEN_VISION_START, QWEN_IMAGE_PAD, QWEN_VISION_END])
    hidden, layers, heads, head_dim = (64, 2, 4, 16) if smoke else (1024, 16, 16, 64)
    vision_hidden, vision_depth = (32, 2) if smoke else (768, 8)
    config = Qwen3VLConfig(
        text_config=dict(
            vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=3 * hidden, num_hidden_layers=layers,
            num_attention_heads=heads, num_key_value_heads=max(heads // 2, 1), head_dim=head_dim,
            max_position_embeddings=4096, rope_parameters={"rope_type": "default", "rope_theta": 5e6,
                                                           "mrope_section": [head_dim // 8, head_dim * 3 // 16,
                                                                             head_dim * 3 // 16],
                                                           "mrope_interleaved": True},
            pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id, bos_token_id=None),
        vision_config=dict(depth=vision_depth, hidden_size=vision_hidden, intermediate_size=2 * vision_hidden,
                           num_heads=max(vision_hidden // 64, 2), patch_size=16, spatial_merge_size=2,
                           temporal_patch_size=2, out_hidden_size=hidden, num_position_embeddings=256,
                           deepstack_visual_indexes=[0] if smoke else [2, 5]),
        image_token_id=ids[1], vision_start_token_id=ids[0], vision_end_token_id=ids[2], tie_word_embeddings=True)
    torch.manual_seed(0)
    Qwen3VLForConditionalGeneration(config).save_pretrained(out)
    model = AutoModelForImageTextToText.from_pretrained(out, dtype=dtype)
    return model, sum(p.numel() for p in model.parameters())


def run_algorithm(algorithm, model_dir, processor, dataset, args, out: Path) -> dict:
    from transformers import AutoModelForImageTextToText

    dtype = torch.float32 if args.smoke else torch.bfloat16
    model = AutoModelForImageTextToText.from_pretrained(model_dir, dtype=dtype)
    config = RLSDConfig(
        output_dir=str(out / algorithm), algorithm=algorithm, per_device_train_batch_size=args.generations * 2,
        num_generations=args.generations, max_completion_length=args.completion_length, max_steps=args.steps,
        learning_rate=1e-5, logging_steps=1, save_strategy="no", report_to=[], bf16=not args.smoke,
        use_cpu=args.smoke, seed=0, disable_tqdm=True, privileged_fields=["answer", "solution"],
        gradient_checkpointing=False)
    trainer = RLSDTrainer(model=model, processing_class=processor, reward_funcs=answer_reward, args=config,
                          train_dataset=dataset)
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    trainer.train()
    wall = time.perf_counter() - start
    logs = [entry for entry in trainer.state.log_history if "step_time" in entry]
    later = logs[1:] or logs  # the first step pays for compilation and allocator warm-up
    mean = lambda key: sum(e.get(key, 0.0) for e in later) / max(len(later), 1)  # noqa: E731
    result = {
        "algorithm": algorithm, "steps": len(logs), "wall_s": wall, "step_time_s": mean("step_time"),
        "teacher_time_frac": mean("teacher/time_frac"),
        "peak_memory_gb": (torch.cuda.max_memory_allocated() / 2**30) if torch.cuda.is_available() else None,
        "pixel_values_in_batch": bool(trainer._buffered_inputs and "pixel_values" in trainer._buffered_inputs[0])
        if getattr(trainer, "_buffered_inputs", None) else None,
        "loss": [e.get("loss") for e in logs],
    }
    del trainer, model
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--smoke", action="store_true", help="CPU, tiny model, image-only processor")
    parser.add_argument("--algorithms", default="grpo,rlsd,opsd")
    parser.add_argument("--steps", type=int, default=None)
    args = parser.parse_args(argv)
    if not args.smoke and not torch.cuda.is_available():
        parser.error("no GPU here: use --smoke for the CPU variant")
    args.steps = args.steps or (2 if args.smoke else 4)
    args.generations = 2 if args.smoke else 8
    args.completion_length = 6 if args.smoke else 256
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    dtype = torch.float32 if args.smoke else torch.bfloat16

    processor, processor_kind = build_processor(out / "processor", args.smoke)
    model, params = build_model(processor, out / "model", args.smoke, dtype)
    del model
    dataset = Dataset.from_list(visual_rows(64, seed=0, size=64 if args.smoke else 448))
    results = [run_algorithm(a, out / "model", processor, dataset, args, out)
               for a in args.algorithms.split(",")]
    base = next((r for r in results if r["algorithm"] == "grpo"), results[0])
    for r in results:
        r["step_time_vs_grpo"] = r["step_time_s"] / max(base["step_time_s"], 1e-9)
        if r["peak_memory_gb"] is not None and base["peak_memory_gb"]:
            r["peak_memory_vs_grpo"] = r["peak_memory_gb"] / base["peak_memory_gb"]
    summary = {"device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
               "torch": torch.__version__, "processor": processor_kind, "parameters": params,
               "completion_length": args.completion_length, "generations": args.generations, "results": results}
    (out / "gpu_check_vlm.json").write_text(json.dumps(summary, indent=2))
    lines = [f"Qwen3-VL-architecture model, {params / 1e6:.1f}M parameters, {summary['device']}, "
             f"processor: {processor_kind}; G={args.generations}, completion {args.completion_length} tokens",
             "| algorithm | step time (s) | vs GRPO | peak GPU memory (GiB) | vs GRPO | teacher share |",
             "| --- | --- | --- | --- | --- | --- |"]
    for r in results:
        memory = "-" if r["peak_memory_gb"] is None else f"{r['peak_memory_gb']:.2f}"
        memory_ratio = f"{r['peak_memory_vs_grpo']:.3f}" if "peak_memory_vs_grpo" in r else "-"
        lines.append(f"| {r['algorithm']} | {r['step_time_s']:.2f} | {r['step_time_vs_grpo']:.3f} | {memory} | "
                     f"{memory_ratio} | {r['teacher_time_frac']:.3f} |")
    table = "\n".join(lines)
    (out / "gpu_check_vlm.md").write_text(table + "\n")
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
