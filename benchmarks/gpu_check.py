"""GPU check: RLSD at realistic sizes on one GPU, in one command, nothing downloaded (target: <= 8 min on one H200).

    PYTHONPATH=src python benchmarks/gpu_check.py --out benchmarks/results/gpu      # on the GPU machine
    PYTHONPATH=src python benchmarks/gpu_check.py --smoke --out /tmp/gpu-smoke      # CPU, tiny model (CI)

What it does, in order (each part is skipped with a message, not failed, once `--time-limit` is spent):
1. builds a random-init Qwen2-architecture model locally (~0.5B parameters: Qwen2.5-0.5B's shape, 151,936-token
   vocabulary) and a ~2x one for OPD, with a character tokenizer padded to that vocabulary, saved in bf16;
2. teacher pass: one group (G = 8) with a 512-token prompt and 2,048-token completions, scored with the
   shared-prefix pass (`rlsd.teacher.shared_prefix`, one prompt forward + KV cache) and with one full forward per row:
   time, peak memory and their largest log-prob difference;
3. 5 RLSD steps in bf16 with transformers generation, and 5 with vLLM colocated if `vllm` imports (else
   skipped, saying so): step time, loss, peak memory, teacher share, all finite;
4. the cost benchmark (`cost_worker.run_worker`) at prompt 512 / completion 2,048 / G = 8 for grpo, rlsd and
   opd2x: one warm-up run, then one step per configuration in this process, peak memory reset in between.
Results: `<out>/gpu_check.json` (everything) and `<out>/gpu_check.txt` (the table printed at the end), rewritten
after every part so a run cut short still leaves what it measured.

Requires torch with CUDA, transformers, trl, peft, accelerate, datasets (what `rlsd` imports); vLLM is optional.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # cost.py / cost_worker.py
if str(HERE.parent / "src") not in sys.path:
    sys.path.insert(1, str(HERE.parent / "src"))

WORKER_PREFIX = "GPU_CHECK_RESULT "
PRESETS = {
    # Qwen2.5-0.5B's shape, random weights: 24 layers, hidden 896, 14 heads (2 KV), MLP 4864, vocab 151,936.
    "gpu": dict(model=dict(hidden=896, layers=24, heads=14, kv_heads=2, intermediate=4864, vocab=151936),
                train=dict(prompt=128, completion=256, batch=8, generations=8, steps=5),
                cost=dict(prompt=512, completion=2048, batch=8, generations=8),
                teacher_pass=dict(prompt=512, completion=2048, generations=8, repeats=3),
                time_limit=480),
    "smoke": dict(model=dict(hidden=32, layers=2, heads=2, kv_heads=1, intermediate=64, vocab=None),
                  train=dict(prompt=64, completion=8, batch=4, generations=2, steps=2),
                  cost=dict(prompt=64, completion=12, batch=4, generations=2),
                  teacher_pass=dict(prompt=48, completion=12, generations=4, repeats=1),
                  time_limit=300),
}


# ---- model and tokenizer (built here, never downloaded) -----------------------------------------------------------
def build_tokenizer(vocab_size: int | None):
    """The character tokenizer of `rlsd.tasks.tiny`, its vocabulary padded with `<xN>` tokens to `vocab_size`.

    Prompts still encode one token per character; a random-init model samples the padding tokens too, and they
    decode (to `<xN>`), so generation, rewards and the teacher pass see a realistic 150k-way softmax.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from rlsd.tasks.tiny import CHAT_TEMPLATE, CHARACTERS, SPECIAL_TOKENS

    tokens = SPECIAL_TOKENS + CHARACTERS
    if vocab_size is not None:
        tokens += [f"<x{i}>" for i in range(vocab_size - len(tokens))]
    backend = Tokenizer(models.WordLevel(vocab={t: i for i, t in enumerate(tokens)}, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Split(pattern="", behavior="isolated")
    backend.decoder = decoders.Fuse()
    backend.add_special_tokens(SPECIAL_TOKENS)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", eos_token="<|im_end|>",
                                        unk_token="<unk>", bos_token=None, padding_side="left")
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def qwen2_config(spec: dict, tokenizer, max_positions: int):
    from transformers import Qwen2Config

    return Qwen2Config(vocab_size=spec["vocab"] or len(tokenizer), hidden_size=spec["hidden"],
                       intermediate_size=spec["intermediate"], num_hidden_layers=spec["layers"],
                       num_attention_heads=spec["heads"], num_key_value_heads=spec["kv_heads"],
                       max_position_embeddings=max_positions, rope_theta=1_000_000.0, tie_word_embeddings=True,
                       pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id, bos_token_id=None)


def count_params(config) -> int:
    import torch
    from transformers import Qwen2ForCausalLM

    with torch.device("meta"):
        return sum(p.numel() for p in Qwen2ForCausalLM(config).parameters())


def teacher_spec(spec: dict, tokenizer, max_positions: int, ratio: float = 2.0) -> dict:
    """A wider model with ~`ratio` x the parameters (head dim and MLP/hidden ratio kept)."""
    head_dim = spec["hidden"] // spec["heads"]
    target = ratio * count_params(qwen2_config(spec, tokenizer, max_positions))

    def widened(heads: int) -> dict:
        hidden = heads * head_dim
        kv = max(1, spec["kv_heads"] * heads // spec["heads"])
        while heads % kv:
            kv -= 1
        step = 32 if spec["intermediate"] >= 256 else 8
        inter = round(spec["intermediate"] * hidden / spec["hidden"] / step) * step
        return {**spec, "hidden": hidden, "heads": heads, "kv_heads": kv, "intermediate": inter}

    candidates = [widened(h) for h in range(spec["heads"], 4 * spec["heads"] + 1)]
    return min(candidates, key=lambda s: abs(count_params(qwen2_config(s, tokenizer, max_positions)) - target))


def build_model(spec: dict, tokenizer, path: Path, max_positions: int, bf16: bool) -> dict:
    import torch
    from transformers import Qwen2ForCausalLM

    config = qwen2_config(spec, tokenizer, max_positions)
    torch.manual_seed(0)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    with torch.device(device):
        model = Qwen2ForCausalLM(config)
    if bf16:
        model = model.to(torch.bfloat16)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    params = sum(p.numel() for p in model.parameters())
    del model
    return {"path": str(path), "params": params, "hidden": spec["hidden"], "layers": spec["layers"],
            "vocab": config.vocab_size}


def context_chars_for(model_path: str, prompt_tokens: int) -> int:
    """Background characters that bring cost_worker's prompts to `prompt_tokens` tokens.

    Counted with the tokenizer the trainer loads from `model_path` (`AutoTokenizer`: for a Qwen2 directory that is
    transformers' Qwen2 tokenizer class, which drops the character vocabulary's spaces), so the count is exact.
    """
    from transformers import AutoTokenizer

    from cost_worker import make_rows

    tokenizer = AutoTokenizer.from_pretrained(model_path)

    def length(chars: int) -> int:
        prompt = make_rows(1, context_chars=chars)[0]["prompt"]
        return len(tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=True,
                                                 return_dict=True)["input_ids"])

    chars = 0
    for _ in range(20):
        missing = prompt_tokens - length(chars)
        if missing <= 0:
            break
        chars += missing
    return chars


# ---- parts ----------------------------------------------------------------------------------------------------------
def _sync():
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _reset_peak() -> None:
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def _peak_mb() -> float | None:
    import torch

    return torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None


def teacher_pass_part(model_path: str, spec: dict, bf16: bool) -> dict:
    """Shared-prefix vs one-forward-per-row teacher log-probs on one group: time, peak memory, max difference."""
    import torch
    from transformers import AutoModelForCausalLM
    from trl.trainer.utils import add_fused_lm_head

    from rlsd.teacher import shared_prefix as teacher_pass

    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.bfloat16 if bf16 else torch.float32)
    model.to(device).eval()
    add_fused_lm_head(model, temperature=1.0)
    vocab = model.config.vocab_size
    g, prompt, completion = spec["generations"], spec["prompt"], spec["completion"]
    generator = torch.Generator().manual_seed(0)
    prompt_ids = torch.randint(4, vocab, (1, prompt), generator=generator).repeat(g, 1).to(device)
    prompt_mask = torch.ones_like(prompt_ids)
    completion_ids = torch.randint(4, vocab, (g, completion), generator=generator).to(device)
    completion_mask = torch.ones_like(completion_ids)
    autocast = (lambda: torch.autocast(device, dtype=torch.bfloat16)) if bf16 else None

    def unshared():
        ids = torch.cat([prompt_ids, completion_ids], 1)
        mask = torch.cat([prompt_mask, completion_mask], 1)
        labels = ids.clone()
        labels[:, :-completion] = -100
        with autocast() if autocast else torch.autocast(device, enabled=False):
            return model(input_ids=ids, attention_mask=mask, labels=labels, fused_lm_head=True).log_probs[
                :, -completion:].float()

    def shared():
        kwargs = {"autocast": autocast} if autocast else {}
        return teacher_pass.shared_prefix_logps(model, prompt_ids, prompt_mask, completion_ids, completion_mask,
                                                batch_size=g, **kwargs)

    result = {"rows": g, "prompt_tokens": prompt, "completion_tokens": completion}
    outputs = {}
    with torch.no_grad():
        for name, fn in (("unshared", unshared), ("shared", shared)):
            fn()  # warm-up (kernels, allocator)
            _sync()
            _reset_peak()
            times = []
            for _ in range(spec["repeats"]):
                start = time.perf_counter()
                outputs[name] = fn()
                _sync()
                times.append(time.perf_counter() - start)
            result[f"{name}_seconds"] = statistics.median(times)
            result[f"{name}_peak_mb"] = _peak_mb()
    result["shared_vs_unshared_time"] = result["shared_seconds"] / result["unshared_seconds"]
    result["max_abs_logp_diff"] = (outputs["shared"] - outputs["unshared"]).abs().max().item()
    model = outputs = None  # free them (a `del` of a closure variable reads as undefined to linters)
    _reset_peak()
    return result


def train_worker(cfg: dict) -> dict:
    """N RLSD steps (subprocess: vLLM and the CUDA context go away with it)."""
    import math

    import torch
    from datasets import Dataset

    from cost_worker import digit_reward, make_rows
    from rlsd import RLSDConfig, RLSDTrainer

    cuda = torch.cuda.is_available()
    vllm = {}
    if cfg["use_vllm"]:
        vllm = dict(use_vllm=True, vllm_mode="colocate", vllm_gpu_memory_utilization=0.3,
                    vllm_max_model_length=cfg["prompt"] + cfg["completion"] + 64, vllm_enable_sleep_mode=False)
    args = RLSDConfig(output_dir=cfg["output_dir"], algorithm="rlsd", per_device_train_batch_size=cfg["batch"],
                      num_generations=cfg["generations"], max_completion_length=cfg["completion"],
                      generation_kwargs={"min_new_tokens": cfg["completion"]} if not cfg["use_vllm"] else
                      {"min_tokens": cfg["completion"]},
                      max_steps=cfg["steps"], learning_rate=1e-5, logging_steps=1, save_strategy="no", report_to=[],
                      use_cpu=not cuda, bf16=cuda, seed=0, disable_tqdm=True, dataloader_num_workers=0, **vllm)
    trainer = RLSDTrainer(model=cfg["model"], reward_funcs=digit_reward, args=args,
                          train_dataset=Dataset.from_list(make_rows(context_chars=cfg["context_chars"])))
    _reset_peak()
    start = time.perf_counter()
    trainer.train()
    _sync()
    wall = time.perf_counter() - start
    logs = [e for e in trainer.state.log_history if "loss" in e]
    keys = ("loss", "step_time", "teacher/time_frac", "reward", "rlsd/weight_mean", "completions/mean_length")
    steps = [{k: e.get(k) for k in keys} for e in logs]
    finite = all(isinstance(v, float) and math.isfinite(v) for s in steps for v in s.values() if v is not None)
    times = [s["step_time"] for s in steps if s["step_time"] is not None]
    return {"steps": steps, "all_finite": finite and len(steps) == cfg["steps"], "wall_seconds": wall,
            "median_step_time": statistics.median(times[1:] or times) if times else None,
            "teacher_time_frac": statistics.median([s["teacher/time_frac"] for s in steps[1:] or steps
                                                    if s["teacher/time_frac"] is not None] or [float("nan")]),
            "peak_mb": _peak_mb(), "use_vllm": cfg["use_vllm"], "prompt_tokens": cfg["prompt"],
            "completion_tokens": cfg["completion"]}


def run_train_part(cfg: dict, timeout: float) -> dict:
    proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(cfg)],
                          capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"})
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(WORKER_PREFIX):
            return json.loads(line[len(WORKER_PREFIX):])
    raise RuntimeError(f"train worker (use_vllm={cfg['use_vllm']}) failed, exit {proc.returncode}:\n"
                       f"{proc.stderr[-3000:]}")


def cost_part(models: dict, spec: dict, context_chars: int, workdir: Path, deadline: float) -> dict:
    """grpo / rlsd / opd2x, one measured step each after one short warm-up run, all in this process.

    A configuration that would end after `deadline` (time.time(), estimated from the previous one) is skipped.
    """
    import torch
    from cost import aggregate
    from cost_worker import run_worker

    base = dict(batch=spec["batch"], generations=spec["generations"], completion=spec["completion"], threads=0,
                reward="dense", lora=False, context_chars=context_chars, student=models["student"]["path"],
                round=0)
    # Warm-up: CUDA context, kernels and allocator, on short completions so it costs seconds, not a full step.
    run_worker({**base, "name": "rlsd", "teacher": None, "completion": 16, "warmup": 0, "steps": 1,
                "output_dir": str(workdir / "warm")})
    results, skipped, last = [], [], 0.0
    for name in ("grpo", "rlsd", "opd2x"):
        if time.time() + 1.1 * last > deadline:
            skipped.append(name)
            print(f"  {name:<6} skipped: it would end after the time limit", flush=True)
            continue
        started = time.time()
        _reset_peak()
        cfg = {**base, "name": name, "teacher": models["teacher2x"]["path"] if name == "opd2x" else None,
               "warmup": 0, "steps": 1, "output_dir": str(workdir / f"cost-{name}")}
        result = run_worker(cfg)
        peak = _peak_mb()
        if peak is not None:
            result["peak_mb"] = peak  # since the reset above: weights, optimizer state, activations of this config
            gc.collect()
            # What the finished trainer left allocated: it would inflate the next config's peak, so it is shown.
            result["left_allocated_mb"] = torch.cuda.memory_allocated() / 2**20
        results.append(result)
        last = time.time() - started
        print(f"  {name:<6} step {result['median_step_time']:.2f}s peak "
              f"{result['peak_mb']:.0f} MB teacher share {result['trainer_teacher_time_frac'] or 0:.1%}", flush=True)
    summary = aggregate(results, rounds=1)
    return {"per_config": {k: {kk: v[kk] for kk in ("median_step_time", "peak_mb", "trainer_teacher_time_frac",
                                                     "teacher_forward_frac", "phases_mean", "teacher_prompt_tokens",
                                                     "student_prompt_tokens")}
                           | {"left_allocated_mb": next(r.get("left_allocated_mb") for r in results if r["name"] == k)}
                           for k, v in summary["per_config"].items()},
            "ratios": {k: v for k, v in summary["ratios"].items() if v is not None},
            "prompt_tokens": spec["prompt"], "completion_tokens": spec["completion"],
            "generations": spec["generations"], "skipped_configs": skipped}


# ---- report ---------------------------------------------------------------------------------------------------------
def report(results: dict) -> str:
    meta = results["meta"]
    lines = [f"RLSD GPU check ({meta['mode']}) on {meta['machine']}; {meta['elapsed_seconds']:.0f}s",
             f"student: random-init Qwen2, {meta['models']['student']['params'] / 1e6:.2f}M params, vocab "
             f"{meta['models']['student']['vocab']}; OPD teacher {meta['models']['teacher2x']['params'] / 1e6:.2f}M"]
    tp = results.get("teacher_pass")
    if isinstance(tp, dict) and "shared_seconds" in tp:
        lines += ["", f"teacher pass, one group of {tp['rows']} ({tp['prompt_tokens']}-token prompt, "
                      f"{tp['completion_tokens']}-token completions):",
                  f"  one forward per row {tp['unshared_seconds']:.3f}s (peak {_mb(tp['unshared_peak_mb'])}), "
                  f"shared prefix {tp['shared_seconds']:.3f}s (peak {_mb(tp['shared_peak_mb'])}): "
                  f"ratio {tp['shared_vs_unshared_time']:.3f}; max |logp diff| {tp['max_abs_logp_diff']:.2e}"]
    for key, title in (("train", "RLSD steps, transformers generation"), ("train_vllm", "RLSD steps, vLLM colocated")):
        part = results.get(key)
        if isinstance(part, dict) and "steps" in part:
            losses = ", ".join(f"{s['loss']:.4f}" for s in part["steps"])
            lines += ["", f"{title}: {len(part['steps'])} steps (prompt {part['prompt_tokens']}, completion "
                          f"{part['completion_tokens']}), median step {part['median_step_time']:.2f}s, teacher share "
                          f"{part['teacher_time_frac']:.1%}, peak {_mb(part['peak_mb'])}, all finite: "
                          f"{part['all_finite']}", f"  losses: {losses}"]
        elif part is not None:
            lines += ["", f"{title}: {part}"]
    cost = results.get("cost")
    if isinstance(cost, dict) and "ratios" in cost:
        lines += ["", f"cost at prompt {cost['prompt_tokens']}, completion {cost['completion_tokens']}, "
                      f"G = {cost['generations']} (one measured step per config):",
                  f"  {'config':<8}{'step s':>9}{'peak':>10}{'teacher%':>10}{'fwd%':>7}"]
        for name, c in cost["per_config"].items():
            frac = c["trainer_teacher_time_frac"]
            lines.append(f"  {name:<8}{c['median_step_time']:>9.2f}{_mb(c['peak_mb']):>10}"
                         f"{'' if frac is None else f'{frac:.1%}':>10}{c['teacher_forward_frac']:>7.0%}")
        if cost.get("skipped_configs"):
            lines.append(f"  skipped (time limit): {', '.join(cost['skipped_configs'])}")
        lines.append("  ratios: " + ", ".join(f"{k} {v:.3f}" for k, v in cost["ratios"].items()
                                            if k.startswith(("rlsd_vs_grpo", "rlsd_vs_opd2x", "rlsd/"))))
    elif cost is not None:
        lines += ["", f"cost: {cost}"]
    return "\n".join(lines)


def _mb(value) -> str:
    return "n/a" if value is None else f"{value:.0f} MB"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="RLSD on one GPU: teacher pass, 5 steps (+vLLM), cost ratios.")
    parser.add_argument("--out", help="directory for gpu_check.json and gpu_check.txt (required)")
    parser.add_argument("--smoke", action="store_true", help="tiny model on CPU, no vLLM: checks the script only")
    parser.add_argument("--time-limit", type=float, default=None,
                        help="seconds; parts that would start after it are skipped (default 480, smoke 300)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(WORKER_PREFIX + json.dumps(train_worker(json.loads(args.worker))), flush=True)
        return 0

    if not args.out:
        parser.error("--out DIR is required")
    started = time.time()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import torch

    from cost import machine_description

    cuda = torch.cuda.is_available()
    if not cuda and not args.smoke:
        parser.error("no CUDA device: run with --smoke for the CPU-sized check")
    mode = "smoke" if args.smoke else "gpu"
    preset = PRESETS[mode]
    limit = args.time_limit or preset["time_limit"]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results: dict = {"meta": {"mode": mode, "machine": machine_description(0), "time_limit": limit,
                              "torch": torch.__version__}}

    def save():
        results["meta"]["elapsed_seconds"] = time.time() - started
        (out / "gpu_check.json").write_text(json.dumps(results, indent=2) + "\n")
        if "models" in results["meta"]:
            (out / "gpu_check.txt").write_text(report(results) + "\n")

    def part(name: str, fn, reserve: float = 0.0):
        left = limit - (time.time() - started) - reserve
        if left <= 0:
            results[name] = f"skipped: the {limit:.0f}s time limit was spent"
            print(f"[{name}] {results[name]}", flush=True)
            return
        print(f"[{name}] started at {time.time() - started:.0f}s", flush=True)
        try:
            results[name] = fn(left)
        except Exception as err:  # noqa: BLE001 - record and go on: the other parts still say something
            results[name] = f"failed: {type(err).__name__}: {str(err)[-2000:]}"
        print(f"[{name}] done at {time.time() - started:.0f}s", flush=True)
        save()

    bf16 = cuda and torch.cuda.is_bf16_supported()
    with tempfile.TemporaryDirectory(prefix="rlsd-gpu-check-") as tmp:
        workdir = Path(tmp)
        tokenizer = build_tokenizer(preset["model"]["vocab"])
        max_positions = preset["cost"]["prompt"] + preset["cost"]["completion"] + 256
        spec = preset["model"]
        models = {"student": build_model(spec, tokenizer, workdir / "student", max_positions, bf16),
                  "teacher2x": build_model(teacher_spec(spec, tokenizer, max_positions), tokenizer,
                                           workdir / "teacher2x", max_positions, bf16)}
        results["meta"]["models"] = {k: {kk: vv for kk, vv in v.items() if kk != "path"} for k, v in models.items()}
        print(f"models built at {time.time() - started:.0f}s: student {models['student']['params'] / 1e6:.1f}M, "
              f"teacher {models['teacher2x']['params'] / 1e6:.1f}M parameters", flush=True)
        save()

        part("teacher_pass", lambda left: teacher_pass_part(models["student"]["path"], preset["teacher_pass"], bf16))
        train = preset["train"]
        train_cfg = {**train, "model": models["student"]["path"], "output_dir": str(workdir / "train"),
                     "context_chars": context_chars_for(models["student"]["path"], train["prompt"]), "use_vllm": False}
        part("train", lambda left: run_train_part(train_cfg, timeout=left))
        cost = preset["cost"]
        part("cost", lambda left: cost_part(models, cost, context_chars_for(models["student"]["path"], cost["prompt"]), workdir,
                                            deadline=started + limit + 30))
        try:
            import vllm  # noqa: F401

            have_vllm = cuda
        except ImportError:
            have_vllm = False
        if have_vllm:
            vllm_cfg = {**train_cfg, "use_vllm": True, "output_dir": str(workdir / "train-vllm")}
            part("train_vllm", lambda left: run_train_part(vllm_cfg, timeout=left))
        else:
            results["train_vllm"] = ("skipped: vllm is not installed (pip install vllm)" if cuda
                                     else "skipped: no GPU (--smoke)")
            print(f"[train_vllm] {results['train_vllm']}", flush=True)
        save()
    text = report(results)
    print("\n" + text)
    print(f"\nwrote {out / 'gpu_check.json'} and {out / 'gpu_check.txt'} ({time.time() - started:.0f}s)")
    failed = [k for k, v in results.items() if isinstance(v, str) and v.startswith("failed")]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
