"""Held-out evaluation: greedy accuracy, pass@k and maj@k for any HF causal LM or vision-language model.

Works with hub models and the tiny local ones alike: chat-message prompts go
through the tokenizer's chat template (with the assistant header appended),
plain-string prompts are used as they are, batches are left-padded and run
through `model.generate`. Rows with images (`image`/`images`, TRL's convention)
go through the VLM's processor with their images. Rewards are computed with the same TRL-signature
reward functions used for training, so "accuracy" here means what the
training reward means.
"""

from __future__ import annotations

import math
from collections import Counter
from contextlib import contextmanager
from typing import Any, Callable, Iterator, Sequence

import torch
from tqdm.auto import tqdm

from ..agents.rollout import evaluate_agent
from ..pretrained import load_pretrained
from ..rewards._text import extract_answer as default_extract
from ..teacher.images import row_images

RewardFn = Callable[..., list[float]]


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from `n` samples with `c` correct (Chen et al. 2021).

    `1 - C(n-c, k) / C(n, k)`, computed as a running product so it never
    forms huge binomials.
    """
    if not 0 <= c <= n or k < 1:
        raise ValueError(f"need 0 <= c <= n and k >= 1, got n={n}, c={c}, k={k}")
    if k > n:
        raise ValueError(f"pass@{k} needs at least {k} samples per problem, got n={n}")
    if n - c < k:
        return 1.0
    prob_all_wrong = 1.0
    for i in range(n - c + 1, n + 1):
        prob_all_wrong *= 1.0 - k / i
    return 1.0 - prob_all_wrong


def majority_vote(answers: Sequence[str | None]) -> tuple[str | None, int]:
    """The most common non-empty answer and its index of first occurrence (ties: earliest wins)."""
    votes = Counter(a for a in answers if a is not None)
    if not votes:
        return None, -1
    best = max(votes.values())
    for i, a in enumerate(answers):
        if a is not None and votes[a] == best:
            return a, i
    raise AssertionError("unreachable")


def maj_correct(answers: Sequence[str | None], correct: Sequence[bool]) -> bool:
    """Whether the majority answer is correct, judged by the reward of a sample that gave it."""
    answer, index = majority_vote(answers)
    return answer is not None and bool(correct[index])


def render_prompt(prompt: Any, tokenizer: Any) -> str:
    """Chat messages through the chat template with the assistant header; strings unchanged."""
    if isinstance(prompt, str):
        return prompt
    return tokenizer.apply_chat_template(list(prompt), tokenize=False, add_generation_prompt=True)


def _as_completions(texts: list[str], prompts: list[Any]) -> list[Any]:
    """Completions in the shape TRL gives reward functions: messages for chat prompts, else strings."""
    return [t if isinstance(p, str) else [{"role": "assistant", "content": t}] for t, p in zip(texts, prompts)]


def _score(reward_fn: RewardFn, rows: list[dict], texts: list[str], prompt_column: str) -> list[float]:
    prompts = [r[prompt_column] for r in rows]
    columns = {key: [r.get(key) for r in rows] for key in rows[0] if key != prompt_column}
    rewards = reward_fn(prompts=prompts, completions=_as_completions(texts, prompts), **columns)
    return [float("nan") if r is None else float(r) for r in rewards]


def load_model(path: str) -> tuple[Any, Any]:
    """(model, tokenizer) of a causal LM, or (model, processor) of a vision-language model, from `path`.

    `path` may be a full model or an adapter-only (LoRA) run directory: the adapter is merged into its base.
    """
    return load_pretrained(path)


def _text_tokenizer(tokenizer: Any) -> Any:
    """The tokenizer itself, or a VLM processor's tokenizer."""
    return getattr(tokenizer, "tokenizer", tokenizer)


def _encode(tokenizer: Any, prompts: list[Any], images: list[list[Any] | None] | None) -> Any:
    """Left-padded model inputs; with `images`, through the VLM processor (pixel values and all)."""
    if images is None or not any(images):
        texts = [render_prompt(p, tokenizer) for p in prompts]
        return _text_tokenizer(tokenizer)(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    texts = [render_prompt(p, tokenizer) for p in with_image_blocks(prompts, images)]
    flat = [img for imgs in images if imgs for img in imgs]
    return tokenizer(images=flat, text=texts, return_tensors="pt", padding=True)


def with_image_blocks(prompts: list[Any], images: list[list[Any] | None] | None) -> list[Any]:
    """Chat prompts with their images placed as TRL places them (an image block per image), else unchanged."""
    if not images:
        return list(prompts)
    from trl.data_utils import prepare_multimodal_messages

    return [prepare_multimodal_messages(list(p), images=imgs) if imgs and not isinstance(p, str) else p
            for p, imgs in zip(prompts, images)]


@contextmanager
def _eval_mode(model: Any, tokenizer: Any) -> Iterator[None]:
    """Eval mode, no grad and left padding for the duration; restores what it found."""
    tokenizer = _text_tokenizer(tokenizer)
    was_training, side = model.training, tokenizer.padding_side
    model.eval()
    tokenizer.padding_side = "left"
    try:
        with torch.no_grad():  # not inference_mode: its tensors could leak into later training
            yield
    finally:
        tokenizer.padding_side = side
        model.train(was_training)


def generate(
    model: Any,
    tokenizer: Any,
    prompts: list[Any],
    *,
    num_return_sequences: int = 1,
    greedy: bool = True,
    temperature: float = 1.0,
    max_new_tokens: int = 128,
    batch_size: int = 64,
    progress: bool = True,
    desc: str = "generate",
    images: list[list[Any] | None] | None = None,
) -> list[list[str]]:
    """Completions (decoded, special tokens dropped) for each prompt, `num_return_sequences` each.

    `batch_size` counts sequences, so sampling n per prompt batches `batch_size // n` prompts at a time.
    Sampling is pure temperature sampling (no top-k/top-p), whatever the model's generation config says.
    For a vision-language model pass its processor as `tokenizer` and each prompt's images as `images`.
    """
    text_tokenizer = _text_tokenizer(tokenizer)
    pad_id = text_tokenizer.pad_token_id if text_tokenizer.pad_token_id is not None else text_tokenizer.eos_token_id
    gen_kwargs: dict[str, Any] = dict(max_new_tokens=max_new_tokens, pad_token_id=pad_id)
    if greedy:
        gen_kwargs.update(do_sample=False, num_beams=1)
    else:
        gen_kwargs.update(do_sample=True, temperature=temperature, top_k=0, top_p=1.0)
    out: list[list[str]] = []
    device = _device(model)
    bar = tqdm(total=len(prompts), desc=desc, disable=not progress, leave=False)
    with _eval_mode(model, tokenizer):
        step = max(1, batch_size // num_return_sequences)
        for start in range(0, len(prompts), step):
            batch = prompts[start : start + step]
            enc = _encode(tokenizer, batch, images[start : start + step] if images else None).to(device)
            seqs = model.generate(**enc, num_return_sequences=num_return_sequences, **gen_kwargs)
            decoded = text_tokenizer.batch_decode(seqs[:, enc["input_ids"].shape[1] :], skip_special_tokens=True)
            out.extend(decoded[i : i + num_return_sequences] for i in range(0, len(decoded), num_return_sequences))
            bar.update(len(batch))
    bar.close()
    return out


def evaluate(
    model: Any,
    tokenizer: Any,
    rows: Sequence[dict],
    reward_fn: RewardFn,
    *,
    k: int = 1,
    num_samples: int | None = None,
    temperature: float = 1.0,
    max_new_tokens: int = 128,
    batch_size: int = 64,
    greedy: bool = True,
    extract_answer: Callable[[str], str | None] | None = None,
    correct_threshold: float = 1.0,
    prompt_column: str = "prompt",
    seed: int | None = 0,
    progress: bool = True,
    tools: Sequence[Callable] | None = None,
    environment_factory: Callable | None = None,
) -> dict[str, Any]:
    """Score `model` on `rows` with `reward_fn`; returns metrics plus per-row `records`.

    With `tools` and/or a TRL `environment_factory` (an agent), each row is a greedy multi-turn episode that
    calls them (`agents.rollout.evaluate_agent`, greedy only; adds `tool_calls_per_episode`).

    - greedy decoding (if `greedy`): `accuracy` (share of rows whose reward is
      >= `correct_threshold`) and `reward_mean`;
    - sampling (if `k > 1`, `num_samples` is set, or `greedy` is False):
      `max(num_samples, k)` samples per row at `temperature`, giving
      `pass@1`, `pass@k` (unbiased estimator), `maj@k` (vote over the first
      `k` samples' extracted answers) and `sample_reward_mean`.
    With only a greedy pass, the single greedy sample is the k=1 sample, so
    `pass@1` and `maj@1` equal `accuracy`. `seed` makes sampling repeatable (for
    the same `batch_size`) without touching the caller's global RNG state.
    """
    rows = list(rows)
    if not rows:
        raise ValueError("evaluate() needs at least one row")
    if tools or environment_factory is not None:
        if k > 1 or num_samples is not None or not greedy:
            raise ValueError("evaluate(tools=...): agent episodes are scored greedily only (k=1, greedy=True)")
        with _eval_mode(model, tokenizer):
            return evaluate_agent(model, tokenizer, rows, reward_fn, tools or [],
                                  environment_factory=environment_factory, max_new_tokens=max_new_tokens,
                                  batch_size=batch_size, correct_threshold=correct_threshold,
                                  prompt_column=prompt_column, extract_answer=extract_answer)
    if extract_answer is None:
        extract_answer = default_extract
    prompts = [r[prompt_column] for r in rows]
    common = dict(max_new_tokens=max_new_tokens, batch_size=batch_size, progress=progress, images=row_images(rows))
    metrics: dict[str, Any] = {"num_rows": len(rows)}
    shown = with_image_blocks(prompts, common["images"])  # what the model reads, image tokens included
    records = [{"prompt": render_prompt(p, tokenizer), "answer": r.get("answer")} for p, r in zip(shown, rows)]

    if greedy:
        texts = [c[0] for c in generate(model, tokenizer, prompts, greedy=True, desc="eval greedy", **common)]
        rewards = _score(reward_fn, rows, texts, prompt_column)
        correct = [r >= correct_threshold for r in rewards]
        metrics["accuracy"] = sum(correct) / len(rows)
        metrics["reward_mean"] = _nanmean(rewards)
        for rec, text, reward, ok in zip(records, texts, rewards, correct):
            rec.update(completion=text, reward=reward, correct=ok, extracted=extract_answer(text))

    sampling = k > 1 or num_samples is not None or not greedy
    if sampling:
        n = max(num_samples or k, k)
        with _seeded(seed, _device(model)):
            samples = generate(
                model, tokenizer, prompts, num_return_sequences=n, greedy=False,
                temperature=temperature, desc=f"eval sample x{n}", **common,
            )
        flat_rows = [r for r in rows for _ in range(n)]
        flat_rewards = _score(reward_fn, flat_rows, [t for s in samples for t in s], prompt_column)
        pass1, passk, majk = [], [], []
        for i, (rec, texts) in enumerate(zip(records, samples)):
            rewards = flat_rewards[i * n : (i + 1) * n]
            correct = [r >= correct_threshold for r in rewards]
            answers = [extract_answer(t) for t in texts]
            pass1.append(pass_at_k(n, sum(correct), 1))
            passk.append(pass_at_k(n, sum(correct), k))
            majk.append(maj_correct(answers[:k], correct[:k]))
            rec.update(samples=texts, sample_rewards=rewards)
            if not greedy:
                rec.update(completion=texts[0], reward=rewards[0], correct=correct[0], extracted=answers[0])
        metrics["pass@1"] = sum(pass1) / len(rows)
        metrics[f"pass@{k}"] = sum(passk) / len(rows)
        metrics[f"maj@{k}"] = sum(majk) / len(rows)
        metrics["sample_reward_mean"] = _nanmean(flat_rewards)
        metrics["num_samples"] = n
    else:
        metrics["pass@1"] = metrics["maj@1"] = metrics["accuracy"]
    if not greedy:
        metrics["accuracy"] = metrics["pass@1"]  # no greedy pass: the sampled estimate stands in

    metrics["records"] = records
    return metrics


def _device(model: Any) -> torch.device:
    params = getattr(model, "parameters", None)
    first = next(iter(params()), None) if callable(params) else None
    return first.device if first is not None else torch.device("cpu")


@contextmanager
def _seeded(seed: int | None, device: torch.device) -> Iterator[None]:
    """Seed sampling inside a forked RNG so the caller's (e.g. the trainer's) random stream is untouched."""
    if seed is None:
        yield
        return
    devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


def _nanmean(values: list[float]) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return sum(finite) / len(finite) if finite else float("nan")
