"""What RLSD costs: step time and peak memory of rlsd vs grpo, vs opd (external 2x/4x teacher), vs plain TRL.

    python benchmarks/cost.py --out benchmarks/results/cost.json   # full: ~7 minutes on 2 CPU cores
    python benchmarks/cost.py --quick     # ~1 minute: smaller model, one round
    python benchmarks/cost.py --smoke     # the script works; the numbers mean nothing
    python benchmarks/cost.py --lora --out benchmarks/results/cost-lora.json   # LoRA student, frozen base
    python benchmarks/cost.py --large --lora --threads 2 --out ...   # 57M student: memory where weights dominate
    python benchmarks/cost.py --long-prompt --configs grpo,rlsd,noshare --out benchmarks/results/cost-long.json

`noshare` is RLSD with `teacher_share_prefix=False` (one teacher forward per row, the pass before issue 14):
`rlsd_vs_noshare` is what reading each teacher prompt once per group saves, measured in the same run.

Every configuration trains the same student on the same prompts with the same seed, in its OWN subprocess
(`cost_worker.py`), so that one run's memory high-water mark cannot pollute another's. Configurations
run in rounds, the order rotated each round, and ratios are taken within a round (paired) before the median
over rounds, so slow drift of the machine cancels.

Step time: wall time between consecutive optimizer-step ends (generation, rewards, teacher pass, loss,
backward, optimizer, logging: everything), median over the steps after `--warmup` discarded ones.
Completion length is pinned to `max_completion_length` (`min_new_tokens`), so every configuration
processes the same number of tokens whatever its weights do. Everything else is TRL's default
(on-policy: no old-logp pass, beta = 0: no reference model, gradient checkpointing on) in every config.
CPU workers use one torch thread by default (`--threads`): on a shared 2-core box two OpenMP threads
stall whenever another process holds a core (identical steps varied 10x), and process CPU time per step
is reported beside wall time as a load-robust cross-check.

Peak memory:
- CPU: the process's resident-set high-water mark (VmHWM) is reset after warm-up (`/proc/self/clear_refs`,
  Linux >= 4.0), read after the last step, and reported minus the RSS measured after imports and before any
  model load ("peak_mb"). It therefore counts weights (student, teacher), gradients, optimizer state and
  activations, but not the interpreter and libraries; code pages touched for the first time are already
  resident after warm-up. Without /proc it falls back to ru_maxrss (polluted by setup, flagged in the JSON).
- CUDA: `torch.cuda.max_memory_allocated` after `reset_peak_memory_stats()` at the end of warm-up.

Phases: each worker wraps (by instance attribute, nothing in the package changes) TRL's `_generate`,
`_calculate_rewards`, `_generate_and_score_completions`, `compute_loss`, and the algorithm's `teacher_prompts`,
`_log_leakage` and the `teacher.activate()` context (= the teacher forward, wherever it runs: the rollout for
rlsd, the loss for opd), so a slow teacher pass can be traced to its part.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from cost_worker import LORA, RESULT_PREFIX, REWARDS

CONFIGS = ("grpo", "rlsd", "opd2x", "opd4x", "trl")
EXTRA_CONFIGS = ("noshare",)  # on request (--configs): rlsd with teacher_share_prefix=False
PRESETS = {  # student size, batch and lengths; teachers are sized from the student (2x / 4x parameters)
    "full": dict(hidden=256, layers=4, heads=4, batch=8, generations=4, completion=96, warmup=2, steps=5, rounds=5),
    "quick": dict(hidden=128, layers=4, heads=4, batch=8, generations=4, completion=48, warmup=1, steps=3, rounds=1),
    "smoke": dict(hidden=32, layers=2, heads=2, batch=4, generations=2, completion=8, warmup=1, steps=1, rounds=1),
    # Big enough that weights and optimizer state, not activations and allocator slack, set the peak: for memory.
    "large": dict(hidden=768, layers=6, heads=12, batch=8, generations=4, completion=96, warmup=1, steps=1, rounds=1),
}
RATIO_TARGETS = {"rlsd_vs_grpo/step_time": 1.10, "rlsd_vs_grpo/peak_mb": 1.05, "rlsd_vs_opd2x/peak_mb": 0.60}


# ---- models and data (parent process) ---------------------------------------------------------------------------
def count_params(hidden: int, layers: int, heads: int) -> int:
    """Parameters of `build_tiny_model` at this size, counted on the meta device (nothing allocated)."""
    import torch

    from rlsd.tasks.tiny import build_char_tokenizer, build_tiny_model

    with torch.device("meta"):
        model = build_tiny_model(build_char_tokenizer(), hidden_size=hidden, num_layers=layers, num_heads=heads)
    return sum(p.numel() for p in model.parameters())


def teacher_hidden(student_params: int, ratio: float, layers: int, heads: int) -> int:
    """The hidden size (a multiple of 2*heads, for rotary head dims) whose parameter count is closest to ratio x."""
    step = 2 * heads
    base = int((ratio ** 0.5) * (student_params / (16 * layers)) ** 0.5)  # ~16 H^2 parameters per layer
    candidates = range(max(step, (base // step - 4) * step), (base // step + 5) * step, step)
    return min(candidates, key=lambda h: abs(count_params(h, layers, heads) / student_params - ratio))


def build_models(workdir: Path, preset: dict, max_positions: int = 512) -> dict[str, dict]:
    """Student and 2x/4x teachers (same char tokenizer), saved as HF directories."""
    from rlsd.tasks.tiny import save_tiny_model

    layers, heads = preset["layers"], preset["heads"]
    student = count_params(preset["hidden"], layers, heads)
    sizes = {"student": preset["hidden"], "teacher2x": teacher_hidden(student, 2, layers, heads),
             "teacher4x": teacher_hidden(student, 4, layers, heads)}
    models = {}
    for name, hidden in sizes.items():
        path = save_tiny_model(workdir / name, hidden_size=hidden, num_layers=layers, num_heads=heads,
                               max_position_embeddings=max_positions)
        params = count_params(hidden, layers, heads)
        models[name] = {"path": str(path), "hidden": hidden, "layers": layers, "params": params,
                        "param_ratio": params / student}
    return models


# ---- parent: schedule, aggregate, print --------------------------------------------------------------------
def run_config_in_subprocess(cfg: dict, timeout: float) -> dict:
    worker = Path(__file__).resolve().with_name("cost_worker.py")
    proc = subprocess.run([sys.executable, str(worker), json.dumps(cfg)],
                          capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"})
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(RESULT_PREFIX):
            return json.loads(line[len(RESULT_PREFIX):])
    raise RuntimeError(f"worker {cfg['name']} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def aggregate(results: list[dict], rounds: int) -> dict:
    """Per-config medians over rounds and paired (same-round) ratios, median over rounds."""
    by_name: dict[str, list[dict]] = {}
    for r in results:
        by_name.setdefault(r["name"], []).append(r)
    per_config = {}
    for name, runs in by_name.items():
        phases = {k: statistics.median(r["phases_mean"].get(k, 0.0) for r in runs)
                  for k in sorted({k for r in runs for k in r["phases_mean"]})}
        fracs = [r["trainer_teacher_time_frac"] for r in runs if r["trainer_teacher_time_frac"] is not None]
        per_config[name] = {
            "median_step_time": statistics.median(r["median_step_time"] for r in runs),
            "median_step_cpu_time": statistics.median(r["median_step_cpu_time"] for r in runs),
            "peak_mb": statistics.median(r["peak_mb"] for r in runs),
            "setup_mb": statistics.median(r["setup_mb"] for r in runs),
            "trainer_teacher_time_frac": statistics.median(fracs) if fracs else None,
            "phases_mean": phases,
            **{k: statistics.median(r[k] for r in runs) if all(k in r for r in runs) else None
               for k in ("student_prompt_tokens", "teacher_prompt_tokens", "zero_advantage_frac")},
            "mean_step_time": statistics.median(r["mean_step_time"] for r in runs),
            "mean_step_cpu_time": statistics.median(r["mean_step_cpu_time"] for r in runs),
        }
    pairs = {"rlsd_vs_grpo": ("rlsd", "grpo"), "rlsd_vs_opd2x": ("rlsd", "opd2x"), "rlsd_vs_opd4x": ("rlsd", "opd4x"),
             "rlsd_vs_trl": ("rlsd", "trl"), "grpo_vs_trl": ("grpo", "trl"), "noshare_vs_grpo": ("noshare", "grpo"),
             "rlsd_vs_noshare": ("rlsd", "noshare")}
    ratios, spread = {}, {}
    for key, (a, b) in pairs.items():
        if a not in by_name or b not in by_name:
            continue
        for metric, field in (("step_time", "median_step_time"), ("cpu_time", "median_step_cpu_time"),
                              ("peak_mb", "peak_mb")):
            per_round = []
            for rnd in range(rounds):
                ra = [r for r in by_name[a] if r["round"] == rnd]
                rb = [r for r in by_name[b] if r["round"] == rnd]
                if ra and rb:
                    per_round.append(_ratio(ra[0][field], rb[0][field]))
            ratios[f"{key}/{metric}"] = statistics.median(per_round) if per_round else None
            spread[f"{key}/{metric}"] = per_round
    for name, c in per_config.items():  # phase shares of the mean step (the teacher forward, wherever it runs)
        c["teacher_forward_frac"] = c["phases_mean"].get("teacher_forward", 0.0) / c["mean_step_time"]
        c["profile_cpu"] = phase_profile(c, cpu=True)
    ratios["rlsd/teacher_time_frac"] = per_config.get("rlsd", {}).get("trainer_teacher_time_frac")
    if "noshare" in per_config:
        ratios["noshare/teacher_time_frac"] = per_config["noshare"]["trainer_teacher_time_frac"]
    return {"per_config": per_config, "ratios": ratios, "ratios_per_round": spread}


PROFILE_BUCKETS = ("generation", "rewards", "teacher_prompts+leakage", "teacher_forward", "rollout_other",
                   "loss_forward", "backward+optimizer+other")


def phase_profile(c: dict, cpu: bool = True) -> dict[str, float]:
    """Mean seconds per step in disjoint buckets that add up to the step (CPU seconds by default)."""
    p = {k: c["phases_mean"].get(f"cpu:{k}" if cpu else k, 0.0) for k in (
        "generate", "rewards", "teacher_prompts", "leakage", "teacher_forward", "teacher_forward@loss_total",
        "rollout_total", "loss_total")}
    in_loss = p["teacher_forward@loss_total"]  # opd/opsd full-vocabulary: the teacher runs inside the loss
    return {"generation": p["generate"], "rewards": p["rewards"],
            "teacher_prompts+leakage": p["teacher_prompts"] + p["leakage"], "teacher_forward": p["teacher_forward"],
            "rollout_other": p["rollout_total"] - p["generate"] - p["rewards"] - p["teacher_prompts"] - p["leakage"]
            - (p["teacher_forward"] - in_loss),
            "loss_forward": p["loss_total"] - in_loss,
            "backward+optimizer+other": (c["mean_step_cpu_time"] if cpu else c["mean_step_time"])
            - p["rollout_total"] - p["loss_total"]}


def format_report(summary: dict) -> str:
    meta, ratios, spread = summary["meta"], summary["ratios"], summary["ratios_per_round"]
    models = meta["models"]
    long_prompt = ", long prompts" if meta.get("long_prompt") else ""
    lines = [f"RLSD cost benchmark ({meta['mode']}, {meta.get('reward', 'dense')} reward{long_prompt}) on "
             f"{meta['machine']}",
             f"student {models['student']['params'] / 1e6:.2f}M params (hidden {models['student']['hidden']}, "
             f"{models['student']['layers']} layers"
             + (f", LoRA r={meta['lora']['r']} on all linear layers, base frozen" if meta.get("lora")
                else ", full fine-tune")
             + "); OPD teachers "
             f"{models['teacher2x']['param_ratio']:.2f}x and {models['teacher4x']['param_ratio']:.2f}x; "
             f"batch {meta['preset']['batch']} ({meta['preset']['generations']} generations/prompt), "
             f"{meta['preset']['completion']} completion tokens; {meta['preset']['warmup']} warm-up + "
             f"{meta['preset']['steps']} measured steps x {meta['preset']['rounds']} round(s)",
             f"memory: {meta['memory_method']}; step time: wall clock (cpu_time: process CPU time, robust to "
             f"other load); 1-min load average during the run {meta['loadavg_1min']['min']:.1f}-"
             f"{meta['loadavg_1min']['max']:.1f}", "",
             f"{'ratio':<28}{'median':>9}  {'target':>8}  {'met':>4}  per round"]
    for key, value in ratios.items():
        target = RATIO_TARGETS.get(key)
        met = "" if target is None or value is None else ("yes" if value <= target else "NO")
        per_round = " ".join(f"{v:.3f}" for v in spread.get(key, []))
        shown = "n/a" if value is None else f"{value:.3f}"
        lines.append(f"{key:<28}{shown:>9}  {('<= %.2f' % target) if target else '':>8}  {met:>4}  {per_round}")
    lines += ["", f"{'config':<8}{'step s':>8}{'cpu s':>8}{'peak MB':>9}{'setup MB':>9}{'teacher%':>9}"
                  f"{'fwd%':>6}  phases (mean s/step)"]
    for name, c in summary["per_config"].items():
        frac = c["trainer_teacher_time_frac"]
        phases = ", ".join(f"{k} {v:.3f}" for k, v in c["phases_mean"].items()
                           if v >= 0.0005 and not k.startswith("cpu:") and "@" not in k)
        lines.append(f"{name:<8}{c['median_step_time']:>8.3f}{c['median_step_cpu_time']:>8.3f}{c['peak_mb']:>9.1f}"
                     f"{c['setup_mb']:>9.1f}{'' if frac is None else f'{frac:.1%}':>9}"
                     f"{c['teacher_forward_frac']:>6.0%}  {phases}")
    configs = [n for n in ("grpo", "rlsd", "noshare", "opd2x") if n in summary["per_config"]]
    lines += ["", "where the time goes (mean CPU seconds per step; the buckets add up to the step):",
              f"{'phase':<26}" + "".join(f"{n:>9}" for n in configs)
              + (f"{'rlsd-grpo':>11}" if {"rlsd", "grpo"} <= set(configs) else "")]
    for bucket in PROFILE_BUCKETS + ("step",):
        vals = {n: (summary["per_config"][n]["mean_step_cpu_time"] if bucket == "step"
                    else summary["per_config"][n]["profile_cpu"][bucket]) for n in configs}
        diff = f"{vals['rlsd'] - vals['grpo']:>+11.3f}" if {"rlsd", "grpo"} <= set(configs) else ""
        lines.append(f"{bucket:<26}" + "".join(f"{vals[n]:>9.3f}" for n in configs) + diff)
    rlsd = summary["per_config"].get("rlsd", summary["per_config"].get("noshare", {}))
    if rlsd.get("teacher_prompt_tokens") is not None:
        lines.append(f"\nrlsd prompt tokens: student {rlsd['student_prompt_tokens']:.0f}, teacher "
                     f"{rlsd['teacher_prompt_tokens']:.0f} (+ {meta['preset']['completion']} completion tokens each); "
                     f"rows with zero advantage (RLSD skips their teacher pass): {rlsd['zero_advantage_frac']:.0%}")
    lines.append("teacher% = teacher/time_frac logged by RLSDTrainer (rollout-side teacher work only); fwd% = time "
                 "inside teacher.activate() / mean step, wherever the teacher forward runs (opd: in the loss)")
    lines.append("setup MB = RSS growth while building the trainer; safetensors are memory-mapped, so an OPD teacher's "
                 "weights become resident on first use (they are inside peak MB, not setup MB)")
    return "\n".join(lines)


def machine_description(threads: int = 0) -> str:
    import torch

    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name()} (CUDA), torch {torch.__version__}"
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        names = re.findall(r"model name\s*:\s*(.+)", Path("/proc/cpuinfo").read_text())
        cpu = names[0] if names else cpu
    used = threads or torch.get_num_threads()
    return f"{os.cpu_count()}-core CPU ({cpu}), no GPU, torch {torch.__version__}, {used} torch thread(s) per worker"


def _schedule(names: list[str], preset: dict, models: dict, tmp: Path, threads: int, reward: str,
              lora: bool = False, context_chars: int = 0) -> list[dict]:
    """Worker configs, round by round, the order rotated each round."""
    teachers = {"opd2x": models["teacher2x"]["path"], "opd4x": models["teacher4x"]["path"]}
    cfgs = []
    for rnd in range(preset["rounds"]):
        shift = rnd % len(names)
        for name in names[shift:] + names[:shift]:
            cfgs.append({**preset, "name": name, "round": rnd, "student": models["student"]["path"],
                         "teacher": teachers.get(name), "threads": threads, "reward": reward, "lora": lora,
                         "context_chars": context_chars,
                         "output_dir": str(tmp / f"out-{name}-{rnd}")})
    return cfgs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="RLSD step time and peak memory vs GRPO, OPD and TRL.")
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="smaller model, 1 round (about 2 minutes on 2 cores)")
    size.add_argument("--smoke", action="store_true", help="tiny model, 1 step: checks the script, not the numbers")
    size.add_argument("--large", action="store_true",
                      help="57M-parameter student, 1 round, 1 step: memory where the weights dominate (slow on CPU)")
    parser.add_argument("--steps", type=int, default=None, help="measured steps per run (after warm-up)")
    parser.add_argument("--warmup", type=int, default=None, help="discarded steps per run")
    parser.add_argument("--rounds", type=int, default=None, help="repeats of every configuration, order rotated")
    parser.add_argument("--configs", default=",".join(CONFIGS),
                        help=f"subset of {','.join(CONFIGS + EXTRA_CONFIGS)}")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch intra-op threads per worker (0: torch's default). 1 by default: on a shared "
                             "small CPU box, OpenMP threads stall whenever another process takes a core")
    parser.add_argument("--jobs", type=int, default=1,
                        help="workers at once; >1 only for smoke runs (timings interfere)")
    parser.add_argument("--out", default="benchmarks/results/cost.json")
    parser.add_argument("--timeout", type=float, default=900, help="seconds per worker")
    parser.add_argument("--reward", choices=sorted(REWARDS), default="dense",
                        help="dense: every group has signal (the teacher scores every row); sparse: a 0/1 reward "
                             "right 1 time in 8, so most groups have none and RLSD skips their teacher pass")
    parser.add_argument("--lora", action="store_true",
                        help=f"LoRA student ({LORA['r']=}, all linear layers, frozen base) in every config; "
                             "OPD's teacher stays a full frozen model")
    parser.add_argument("--long-prompt", action="store_true",
                        help="put background text before every question so the teacher prompt is >= 4x the "
                             "completion length (where reading it once per group matters most)")
    args = parser.parse_args(argv)

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    mode = "smoke" if args.smoke else "quick" if args.quick else "large" if args.large else "full"
    preset = dict(PRESETS[mode])
    for key in ("steps", "warmup", "rounds"):
        if getattr(args, key) is not None:
            preset[key] = getattr(args, key)
    names = [n.strip() for n in args.configs.split(",") if n.strip()]
    unknown = set(names) - set(CONFIGS) - set(EXTRA_CONFIGS)
    if unknown:
        parser.error(f"unknown configs {sorted(unknown)}")
    started = time.time()
    load_start = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    results = []
    with tempfile.TemporaryDirectory(prefix="rlsd-cost-") as tmp:
        # The default prompts' teacher context is ~110 tokens; this much background makes it >= 4x the completion.
        context_chars = 4 * preset["completion"] if args.long_prompt else 0
        models = build_models(Path(tmp), preset, max_positions=max(512, 6 * preset["completion"] + 256))
        cfgs = _schedule(names, preset, models, Path(tmp), args.threads, args.reward, args.lora, context_chars)
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
            for cfg, result in zip(cfgs, pool.map(lambda c: run_config_in_subprocess(c, args.timeout), cfgs)):
                print(f"[round {cfg['round'] + 1}/{preset['rounds']}] {cfg['name']:<6} median step "
                      f"{result['median_step_time']:.3f}s (cpu {result['median_step_cpu_time']:.3f}s) "
                      f"peak {result['peak_mb']:.1f} MB", flush=True)
                results.append(result)
    summary = aggregate(results, preset["rounds"])
    load = [r["loadavg_1min"][0] for r in results if r["loadavg_1min"][0] is not None]
    summary["meta"] = {"mode": mode, "reward": args.reward, "lora": LORA if args.lora else None,
                       "long_prompt": args.long_prompt,
                       "preset": preset, "machine": machine_description(args.threads),
                       "configs": names, "threads": args.threads, "jobs": args.jobs,
                       "models": {k: {kk: vv for kk, vv in v.items() if kk != "path"} for k, v in models.items()},
                       "memory_method": results[0]["memory_method"], "wall_seconds": time.time() - started,
                       "loadavg_1min": {"start": load_start, "min": min(load, default=None),
                                        "max": max(load, default=None)},
                       "targets": RATIO_TARGETS}
    summary["raw"] = results
    text = format_report(summary)
    print("\n" + text)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(summary, indent=2) + "\n")
    print(f"\nwrote {out} ({summary['meta']['wall_seconds']:.0f}s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
