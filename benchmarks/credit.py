"""Does the teacher blame the right tokens? A credit-localisation benchmark for RLSD's token weights.

Take correct worked solutions of the built-in `arithmetic` task (one operation per line), corrupt exactly one
intermediate step's result (later lines carry the wrong value on, so the final answer is wrong and the error's
token span is known), and score both versions with the warm-started model's self-teacher: the same model with
the reference answer and solution in its prompt (RLSD's teacher), against the plain-prompt student.
With delta_t = q_t - s_t, RLSD's weight is w_t = clip(exp(sign(A) * delta_t), 1 - eps_w, 1 + eps_w)
(`credit.rlsd_token_advantages`). On the wrong rollout (A < 0) the extra blame is (w_t - 1)+; we report the
share of it that falls on the corrupted span against the span's share of the tokens, which is exactly the
share GRPO's uniform blame gives it. On the correct rollout (A > 0) the same for the extra credit, on the same
span (now the right intermediate result, matching the reference). Also per region: the lines before the
error (identical to the reference) and the lines after it (carrying the error on).

    python benchmarks/credit.py                # warm start (<= 7 min) + 300 examples, one thread
    python benchmarks/credit.py --quick        # pipeline check: untrained tiny model, 16 examples, < 30 s

Writes `credit.json`, `credit.png` (distribution + regions) and `credit-example.png` (one pair, coloured as
`rlsd inspect` colours tokens) into --out.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from rlsd.credit import maths as credit  # noqa: E402
from rlsd.teacher.prompts import with_reference  # noqa: E402

PRIVILEGED_FIELDS = ("answer", "solution")
REGIONS = ("before", "span", "after")


# ---- corrupting a worked solution ---------------------------------------------------------------------------------
def corrupt(solution: str, rng: random.Random) -> tuple[str, tuple[int, int], tuple[int, int]] | None:
    """A copy of an arithmetic solution with one intermediate result changed and carried on.

    Returns (corrupted text, (start, end) characters of the wrong result, (start, end) of the text after it);
    None if the solution has no intermediate step. Values stay non-negative, so every line stays well-formed.
    """
    lines = solution.split("\n")
    steps = [line for line in lines if "=" in line]
    if len(steps) < 2:
        return None
    k = rng.randrange(len(steps) - 1)  # never the last step: the error must be carried to the answer
    for _ in range(50):
        shift = rng.choice([d for d in range(-9, 10) if d])
        out, value, ok = [], None, True
        for i, line in enumerate(steps):
            left, result = line.split("=")
            op_at = max(left.rfind("+"), left.rfind("-"))
            first, op, operand = left[:op_at], left[op_at], int(left[op_at + 1:])
            first = int(first) if value is None else value
            value = first + operand if op == "+" else first - operand
            if i == k:
                value += shift
            ok &= value >= 0
            out.append(f"{first}{op}{operand}={value}")
        if ok:
            break
    else:
        return None
    text = "\n".join(out + [f"Answer: {value}"])
    start = sum(len(line) + 1 for line in out[:k]) + out[k].index("=") + 1
    end = sum(len(line) + 1 for line in out[:k]) + len(out[k])
    return text, (start, end), (end, len(text))


# ---- scoring ------------------------------------------------------------------------------------------------------
def completion_logps(model, tokenizer, prompts: list[str], completions: list[str]) -> list[torch.Tensor]:
    """log p(y_t | prompt, y_<t) of each completion's tokens, one forward per batch (left-padded prompts)."""
    prompt_ids = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
    completion_ids = [tokenizer(c, add_special_tokens=False)["input_ids"] for c in completions]
    width_p, width_c = max(map(len, prompt_ids)), max(map(len, completion_ids))
    pad = tokenizer.pad_token_id
    ids = torch.full((len(prompts), width_p + width_c), pad, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for b, (p, c) in enumerate(zip(prompt_ids, completion_ids)):
        ids[b, width_p - len(p):width_p + len(c)] = torch.tensor(p + c)
        mask[b, width_p - len(p):width_p + len(c)] = 1
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=mask, position_ids=positions).logits.float()
    logps = torch.log_softmax(logits[:, width_p - 1:-1], dim=-1).gather(-1, ids[:, width_p:, None]).squeeze(-1)
    return [logps[b, :len(c)] for b, c in enumerate(completion_ids)]


def token_regions(tokenizer, text: str, span: tuple[int, int], after: tuple[int, int]) -> list[str]:
    """Region of each token of `text`: before the error, on the (wrong or right) result, or after it."""
    offsets = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    regions = []
    for start, end in offsets:
        if start < span[1] and end > span[0]:
            regions.append("span")
        elif start >= after[0]:
            regions.append("after")
        else:
            regions.append("before")
    return regions


def shares(weights: torch.Tensor, regions: list[str]) -> dict[str, dict[str, float]]:
    """Per region: its share of the extra weight sum((w-1)+) and its share of the tokens."""
    extra = (weights - 1.0).clamp(min=0.0)
    total = float(extra.sum())
    out = {}
    for region in REGIONS:
        idx = torch.tensor([r == region for r in regions])
        out[region] = {"extra_share": float(extra[idx].sum()) / total if total > 0 else float("nan"),
                       "token_share": float(idx.float().mean())}
    out["_total_extra"] = total
    return out


def rlsd_weights(sign: float, teacher: torch.Tensor, student: torch.Tensor, eps_w: float) -> torch.Tensor:
    """w_t via the trainer's own math: A_t / A at lambda = 1."""
    adv, _ = credit.rlsd_token_advantages(torch.tensor([sign]), teacher[None], student[None],
                                          torch.ones_like(teacher)[None], lam=1.0, eps_w=eps_w)
    return (adv[0] / sign).float()


def score(model, tokenizer, rows: list[dict], seed: int, eps_w: float, batch: int = 16) -> list[dict]:
    from rlsd.app.evaluate import render_prompt

    rng = random.Random(seed)
    examples = []
    for row in rows:
        corrupted = corrupt(row["solution"], rng)
        if corrupted is not None:
            examples.append((row, *corrupted))
    teacher_rows = with_reference([row for row, *_ in examples], PRIVILEGED_FIELDS)
    results = []
    for i in range(0, len(examples), batch):
        chunk, teacher_chunk = examples[i:i + batch], teacher_rows[i:i + batch]
        student_prompts = [render_prompt(row["prompt"], tokenizer) for row, *_ in chunk]
        teacher_prompts = [render_prompt(row["prompt"], tokenizer) for row in teacher_chunk]
        for version in ("wrong", "right"):
            texts = [text if version == "wrong" else row["solution"] for row, text, _, _ in chunk]
            q = completion_logps(model, tokenizer, teacher_prompts, texts)
            s = completion_logps(model, tokenizer, student_prompts, texts)
            for j, (row, text, span, after) in enumerate(chunk):
                if version == "right":  # the same step's (right) result; the reference text is shorter or longer
                    span, after = _same_step(row["solution"], text, span)
                regions = token_regions(tokenizer, texts[j], span, after)
                sign = -1.0 if version == "wrong" else 1.0
                weights = rlsd_weights(sign, q[j], s[j], eps_w)
                delta = q[j] - s[j]
                record = {"version": version, "text": texts[j], "shares": shares(weights, regions),
                          "delta_span": float(delta[torch.tensor([r == "span" for r in regions])].mean()),
                          "delta_rest": float(delta[torch.tensor([r != "span" for r in regions])].mean()),
                          "weights": weights.tolist(), "delta": delta.tolist(), "regions": regions}
                if version == "wrong":
                    results.append({"prompt": row["prompt"], "answer": row["answer"], "wrong": record})
                else:
                    results[i + j]["right"] = record
    return results


def _same_step(solution: str, corrupted: str, span: tuple[int, int]) -> tuple[tuple[int, int], tuple[int, int]]:
    """In the correct solution: the characters of the result of the step that was corrupted, and after it."""
    k = corrupted[:span[0]].count("\n")
    lines = solution.split("\n")
    start = sum(len(line) + 1 for line in lines[:k]) + lines[k].index("=") + 1
    end = sum(len(line) + 1 for line in lines[:k]) + len(lines[k])
    return (start, end), (end, len(solution))


# ---- summary and pictures -----------------------------------------------------------------------------------------
def summarize(results: list[dict]) -> dict:
    out = {}
    for version, label in (("wrong", "wrong rollouts (A < 0): extra blame"),
                           ("right", "correct rollouts (A > 0): extra credit")):
        per_region = {}
        for region in REGIONS:
            extra = [r[version]["shares"][region]["extra_share"] for r in results
                     if r[version]["shares"]["_total_extra"] > 0]
            tokens = [r[version]["shares"][region]["token_share"] for r in results]
            per_region[region] = {"extra_share_mean": statistics.fmean(extra) if extra else None,
                                  "token_share_mean": statistics.fmean(tokens)}
        span = [(r[version]["shares"]["span"]["extra_share"], r[version]["shares"]["span"]["token_share"])
                for r in results if r[version]["shares"]["_total_extra"] > 0]
        extra_share = [e for e, _ in span]
        quartiles = statistics.quantiles(extra_share, n=4) if len(extra_share) > 1 else [float("nan")] * 3
        out[version] = {
            "label": label,
            "examples": len(results), "with_any_extra": len(span),
            "span_extra_share": {"mean": statistics.fmean(extra_share) if span else None,
                                 "q1": quartiles[0], "median": quartiles[1], "q3": quartiles[2]},
            "span_token_share_mean": statistics.fmean(t for _, t in span) if span else None,
            "span_above_uniform_frac": statistics.fmean(float(e > t) for e, t in span) if span else None,
            "regions": per_region,
            "delta_span_mean": statistics.fmean(r[version]["delta_span"] for r in results),
            "delta_rest_mean": statistics.fmean(r[version]["delta_rest"] for r in results),
        }
    return out


def plot(results: list[dict], summary: dict, out_png: Path) -> None:
    from rlsd.app.plotting import pyplot

    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    ax = axes[0]
    for version, colour in (("wrong", "#c0392b"), ("right", "#2a9d4b")):
        values = [r[version]["shares"]["span"]["extra_share"] for r in results
                  if r[version]["shares"]["_total_extra"] > 0]
        ax.hist(values, bins=20, range=(0, 1), alpha=0.55, color=colour, label=summary[version]["label"])
    token_share = summary["wrong"]["span_token_share_mean"] or 0.0
    ax.axvline(token_share, color="black", linestyle="--", label=f"span's token share (GRPO) {token_share:.2f}")
    ax.set_xlabel("share of the extra weight on the corrupted step's result")
    ax.set_ylabel("examples")
    ax.legend(fontsize=7)
    ax = axes[1]
    width, x = 0.2, range(len(REGIONS))
    for offset, (version, key, colour, label) in enumerate([
            ("wrong", "extra_share_mean", "#c0392b", "RLSD blame share (wrong)"),
            ("right", "extra_share_mean", "#2a9d4b", "RLSD credit share (correct)"),
            ("wrong", "token_share_mean", "#888888", "token share = GRPO (wrong)")]):
        values = [summary[version]["regions"][region][key] or 0.0 for region in REGIONS]
        ax.bar([i + (offset - 1) * width for i in x], values, width, color=colour, label=label)
    ax.set_xticks(list(x), ["before the error", "the step's result", "after (error carried)"])
    ax.set_ylabel("mean share")
    ax.legend(fontsize=7)
    fig.suptitle(f"Where RLSD's extra weight goes ({summary['wrong']['examples']} corrupted worked solutions)")
    fig.tight_layout()
    fig.savefig(out_png, dpi=110)
    plt.close(fig)


def plot_example(example: dict, tokenizer, eps_w: float, out_png: Path) -> None:
    """One correct/corrupted pair as `rlsd inspect` shows a group (tokens coloured by w_t)."""
    from rlsd.app.inspect import plot_group

    completions = []
    for version, adv in (("right", 1.0), ("wrong", -1.0)):
        record = example[version]
        ids = tokenizer(record["text"], add_special_tokens=False)["input_ids"]
        completions.append({"tokens": tokenizer.batch_decode([[i] for i in ids]), "reward": 1.0 if adv > 0 else 0.0,
                            "advantage": adv, "signals": {"weight": record["weights"], "delta": record["delta"]}})
    prompt = example["prompt"][-1]["content"] if isinstance(example["prompt"], list) else example["prompt"]
    group = {"step": 0, "group": 0, "algorithm": "rlsd", "prompt": prompt, "color": "weight", "center": 1.0,
             "params": {"lambda": 1.0, "eps_w": eps_w}, "completions": completions}
    plot_group(group, out_png)


# ---- main ---------------------------------------------------------------------------------------------------------
def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="untrained tiny model, 16 examples (a pipeline check)")
    parser.add_argument("--examples", type=int, default=300)
    parser.add_argument("--difficulty", type=int, default=1, help="arithmetic difficulty (1: two operations)")
    parser.add_argument("--eps-w", type=float, default=0.2)
    parser.add_argument("--warm-budget", type=float, default=420.0, help="warm-start SFT seconds")
    parser.add_argument("--warm-batch", type=int, default=16, help="warm-start SFT batch size (small: more steps)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "credit"))
    parser.add_argument("--model-dir", default=None, help="reuse this warm-started model (default: --out/warmstart)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    torch.manual_seed(args.seed)
    started = time.perf_counter()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    from transformers import AutoModelForCausalLM, AutoTokenizer

    from rlsd.tasks import get_task

    meta = {"task": "arithmetic", "difficulty": args.difficulty, "eps_w": args.eps_w, "seed": args.seed,
            "quick": args.quick, "privileged_fields": list(PRIVILEGED_FIELDS)}
    if args.quick:
        from rlsd.tasks.tiny import save_tiny_model

        model_dir = save_tiny_model(out / "tiny-model", hidden_size=32, num_layers=2, num_heads=2)
        examples = min(args.examples, 16)
    else:
        from rlsd.app.quickstart import WARM_START_PRIVILEGED_FRACTION, self_teacher_accuracy
        from rlsd.app.warmstart import warm_start

        model_dir = Path(args.model_dir or out / "warmstart")
        warm = warm_start("arithmetic", model_dir, seed=args.seed, difficulty=args.difficulty,
                          time_budget_s=args.warm_budget, max_steps=3000, target_accuracy=(0.3, 0.5), num_threads=1,
                          batch_size=args.warm_batch,
                          privileged_fraction=WARM_START_PRIVILEGED_FRACTION, num_eval_rows=100, progress=False)
        meta["warm_start"] = {"accuracy": warm.accuracy, "steps": warm.steps, "seconds": round(warm.seconds, 1),
                              "reused": warm.reused, "parameters": warm.num_parameters,
                              "accuracy_with_reference": self_teacher_accuracy("arithmetic", str(model_dir), 50)}
        examples = args.examples
        print(f"credit benchmark: warm start {meta['warm_start']}", flush=True)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    rows = get_task("arithmetic").make_rows(examples, seed=args.seed, difficulty=args.difficulty, split="test")
    results = score(model, tokenizer, rows, args.seed, args.eps_w)
    reward = get_task("arithmetic").reward
    meta["reward_check"] = {  # the corruption makes the final answer wrong, the reference stays right
        "wrong": statistics.fmean(reward(None, [r["wrong"]["text"] for r in results], [r["answer"] for r in results])),
        "right": statistics.fmean(reward(None, [r["right"]["text"] for r in results], [r["answer"] for r in results]))}
    summary = summarize(results)
    meta["seconds"] = round(time.perf_counter() - started, 1)
    (out / "credit.json").write_text(json.dumps({"meta": meta, "summary": summary,
                                                 "examples": [{k: r[k] for k in ("answer",)} | {
                                                     v: {"text": r[v]["text"], "shares": r[v]["shares"]}
                                                     for v in ("wrong", "right")} for r in results[:20]]},
                                                indent=1))
    plot(results, summary, out / "credit.png")
    best = max(results, key=lambda r: r["wrong"]["shares"]["_total_extra"])
    plot_example(best, tokenizer, args.eps_w, out / "credit-example.png")
    for version in ("wrong", "right"):
        s = summary[version]
        print(f"{s['label']}: share on the step's result {s['span_extra_share']['mean']:.3f} "
              f"(median {s['span_extra_share']['median']:.3f}) vs its token share {s['span_token_share_mean']:.3f}; "
              f"above uniform in {s['span_above_uniform_frac']:.0%} of {s['with_any_extra']} examples")
    print(f"reward check {meta['reward_check']}; {meta['seconds']}s; wrote {out / 'credit.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
