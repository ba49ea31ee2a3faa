"""Multi-turn episodes outside the trainer: greedy evaluation rollouts and SFT examples for agent tasks.

Both build token sequences the way TRL's tool loop does (prompt rendered with the tool list, each agent turn
ending at EOS, each tool result spliced in as the chat template's suffix for a `tool` message), so a model
evaluated or warm-started here sees exactly the layout it meets in RL training.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from ..rewards._text import completion_text, extract_answer as default_extract


def tool_suffix_ids(tokenizer, tool_messages: list[dict]) -> list[int]:
    """Token ids that follow an agent turn's EOS for these tool results, up to the next assistant header
    (TRL's `GRPOTrainer._get_tool_suffix_ids`, for a plain tokenizer)."""
    call = [{"type": "function", "function": {"name": tool_messages[0]["name"], "arguments": {}}}]
    dummy = [{"role": "user", "content": "dummy"}, {"role": "assistant", "content": "", "tool_calls": call}]
    prefix = tokenizer.apply_chat_template(dummy, tokenize=True, return_dict=False)
    full = tokenizer.apply_chat_template(dummy + tool_messages, tokenize=True, return_dict=False,
                                         add_generation_prompt=True)
    eos = [i for i, t in enumerate(prefix) if t == tokenizer.eos_token_id]
    if eos:
        prefix = prefix[: eos[-1] + 1]
    if full[: len(prefix)] != prefix:
        raise ValueError("the chat template is not prefix-preserving: tool results cannot be spliced in")
    return full[len(prefix):]


def prompt_ids(tokenizer, prompt: list[dict], tools: Sequence[Callable]) -> list[int]:
    return tokenizer.apply_chat_template(list(prompt), tools=list(tools) or None, tokenize=True, return_dict=False,
                                         add_generation_prompt=True)


def sft_example(tokenizer, prompt: list[dict], episode: list[dict], tools: Sequence[Callable]) -> dict[str, list[int]]:
    """`input_ids` and `labels` for one worked episode: labels only on the agent's turns (each with its EOS);
    prompt, tool results and template glue are -100, as `tool_mask` leaves them out of RL."""
    ids = prompt_ids(tokenizer, prompt, tools)
    labels = [-100] * len(ids)
    history = list(prompt)
    i = 0
    while i < len(episode):
        turn = episode[i]
        if turn["role"] != "assistant":
            raise ValueError(f"episode message {i}: expected an assistant turn, got {turn['role']!r}")
        rendered = tokenizer.apply_chat_template(history + [turn], tools=list(tools) or None, tokenize=True,
                                                 return_dict=False)
        before = tokenizer.apply_chat_template(history, tools=list(tools) or None, tokenize=True, return_dict=False,
                                               add_generation_prompt=True)
        agent = rendered[len(before):]
        agent = agent[: agent.index(tokenizer.eos_token_id) + 1]
        ids, labels = ids + agent, labels + agent
        history.append(turn)
        i += 1
        results = []
        while i < len(episode) and episode[i]["role"] == "tool":
            results.append(episode[i])
            i += 1
        if results:
            suffix = tool_suffix_ids(tokenizer, results)
            ids, labels = ids + suffix, labels + [-100] * len(suffix)
            history += results
    return {"input_ids": ids, "labels": labels}


def run_tool_calls(tool_calls: list[dict], tools: dict[str, Callable]) -> list[dict]:
    """Tool messages for one turn's calls; a failing or unknown tool answers with its error, as in TRL."""
    messages = []
    for call in tool_calls:
        function = call.get("function", {})
        name = function.get("name", "unknown")
        try:
            if name not in tools:
                raise ValueError(f"Tool {name} not found.")
            result = tools[name](**(function.get("arguments") or {}))
        except Exception as err:  # a tool's failure is the episode's, not the run's
            result = {"error": str(err)}
        messages.append({"role": "tool", "name": name, "content": str(result)})
    return messages


@torch.no_grad()
def rollout(model, tokenizer, prompts: Sequence[list[dict]], tools: Sequence[Callable], *,
            episode_tools: Sequence[Sequence[Callable]] | None = None, max_new_tokens: int = 128,
            max_turns: int = 8, batch_size: int = 64) -> list[dict[str, Any]]:
    """Greedy episodes: generate, run the turn's tool calls, splice in the results, repeat.

    `tools` serve every episode; `episode_tools` (one list per prompt, e.g. an environment's methods) replace them.
    `max_new_tokens` bounds the whole completion (agent and tool tokens), like TRL's `max_completion_length`.
    Returns per prompt `{"messages": [...], "tool_calls": n, "tool_errors": n, "text": str}`.
    """
    from trl.chat_template_utils import parse_response

    episodes = []
    for start in range(0, len(prompts), batch_size):
        chunk = list(prompts[start:start + batch_size])
        chunk_tools = [list(episode_tools[start + k]) if episode_tools is not None else list(tools)
                       for k in range(len(chunk))]
        starts = [prompt_ids(tokenizer, p, t) for p, t in zip(chunk, chunk_tools, strict=True)]
        seqs = [list(s) for s in starts]
        state = [{"messages": [], "tool_calls": 0, "tool_errors": 0} for _ in chunk]
        active = list(range(len(chunk)))
        for _ in range(max_turns):
            budgets = {i: max_new_tokens - (len(seqs[i]) - len(starts[i])) for i in active}
            active = [i for i in active if budgets[i] > 0]
            if not active:
                break
            new = _greedy(model, tokenizer, [seqs[i] for i in active], max(budgets[i] for i in active))
            next_active = []
            for i, ids in zip(active, new, strict=True):
                ids = ids[: budgets[i]]
                if not ids:
                    continue
                turn = parse_response(tokenizer, ids, prefix=seqs[i], tools=chunk_tools[i])
                seqs[i] += ids
                state[i]["messages"].append(turn)
                if not turn.get("tool_calls") or ids[-1] != tokenizer.eos_token_id:
                    continue
                results = run_tool_calls(turn["tool_calls"], {t.__name__: t for t in chunk_tools[i]})
                state[i]["tool_calls"] += len(results)
                state[i]["tool_errors"] += sum(r["content"].startswith("{'error'") for r in results)
                suffix = tool_suffix_ids(tokenizer, results)
                if len(seqs[i]) - len(starts[i]) + len(suffix) >= max_new_tokens:
                    continue  # no room for the result: the episode ends here, as TRL drops overlong results
                state[i]["messages"] += results
                seqs[i] += suffix
                next_active.append(i)
            active = next_active
        for i, episode in enumerate(state):
            episode["text"] = tokenizer.decode(seqs[i][len(starts[i]):])
        episodes += state
    return episodes


def evaluate_agent(model, tokenizer, rows: Sequence[dict], reward_fn: Callable | None, tools: Sequence[Callable], *,
                   environment_factory: Callable | None = None, max_new_tokens: int = 128, batch_size: int = 64,
                   correct_threshold: float = 1.0, prompt_column: str = "prompt",
                   extract_answer: Callable | None = None) -> dict[str, Any]:
    """Greedy held-out accuracy of an agent (`rlsd.app.evaluate.evaluate(..., tools=...)`), plus tool calls and
    tool errors per episode. The reward sees the episode's messages, as in training.

    With `environment_factory` each row gets a fresh environment, as in TRL: `reset(**row)`'s observation joins
    the last user message, its public methods join `tools`, the reward receives `environments=`, and an
    environment's `get_reward()` adds to the reward.
    """
    extract_answer = extract_answer or default_extract
    prompts = [r[prompt_column] for r in rows]
    environments, episode_tools = None, None
    if environment_factory is not None:
        environments = [environment_factory() for _ in rows]
        prompts = [_reset(env, row, prompt) for env, row, prompt in zip(environments, rows, prompts, strict=True)]
        episode_tools = [list(tools) + environment_tools(env) for env in environments]
    episodes = rollout(model, tokenizer, prompts, tools, episode_tools=episode_tools, max_new_tokens=max_new_tokens,
                       batch_size=batch_size)
    completions = [e["messages"] for e in episodes]
    columns = {key: [r.get(key) for r in rows] for key in rows[0] if key != prompt_column}
    if environments is not None:
        columns["environments"] = environments
    total = [0.0] * len(rows)
    if reward_fn is not None:
        total = [None if r is None else float(r)
                 for r in reward_fn(prompts=prompts, completions=completions, **columns)]
    if environments is not None and callable(getattr(environments[0], "get_reward", None)):
        total = [None if t is None else t + float(env.get_reward()) for t, env in zip(total, environments)]
    rewards = [float("nan") if r is None else float(r) for r in total]
    correct = [r >= correct_threshold for r in rewards]
    accuracy = sum(correct) / len(rows)
    records = [{"prompt": tokenizer.decode(prompt_ids(tokenizer, p, episode_tools[k] if episode_tools else tools)),
                "answer": r.get("answer"), "completion": e["text"], "reward": reward, "correct": ok,
                "extracted": extract_answer(completion_text(e["messages"])), "tool_calls": e["tool_calls"]}
               for k, (p, r, e, reward, ok) in enumerate(zip(prompts, rows, episodes, rewards, correct, strict=True))]
    finite = [r for r in rewards if r == r]
    return {"num_rows": len(rows), "accuracy": accuracy, "reward_mean": sum(finite) / max(len(finite), 1),
            "pass@1": accuracy, "maj@1": accuracy,
            "tool_calls_per_episode": sum(e["tool_calls"] for e in episodes) / len(rows),
            "tool_errors_per_episode": sum(e["tool_errors"] for e in episodes) / len(rows), "records": records}


def _greedy(model, tokenizer, sequences: list[list[int]], max_new_tokens: int) -> list[list[int]]:
    """Greedy continuations of left-padded `sequences`, each cut after its first EOS."""
    device = next(model.parameters()).device
    width = max(len(s) for s in sequences)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    input_ids = torch.tensor([[pad] * (width - len(s)) + s for s in sequences], device=device)
    attention_mask = torch.tensor([[0] * (width - len(s)) + [1] * len(s) for s in sequences], device=device)
    out = model.generate(input_ids=input_ids, attention_mask=attention_mask, max_new_tokens=max_new_tokens,
                         do_sample=False, num_beams=1, pad_token_id=pad, eos_token_id=tokenizer.eos_token_id)
    continuations = []
    for row in out[:, width:].tolist():
        if tokenizer.eos_token_id in row:
            row = row[: row.index(tokenizer.eos_token_id) + 1]
        continuations.append([t for t in row if t != pad])
    return continuations


def environment_tool_names(environment_class: type) -> list[str]:
    """The methods TRL exposes as tools: public functions of the class except `reset` and `get_reward`."""
    import inspect

    return [name for name, _ in inspect.getmembers(environment_class, inspect.isfunction)
            if name not in ("reset", "get_reward") and not name.startswith("_")]


def environment_tools(environment) -> list[Callable]:
    """An environment instance's tools (`environment_tool_names`), bound to it."""
    return [getattr(environment, name) for name in environment_tool_names(type(environment))]


def _reset(environment, row: dict, prompt: list[dict]) -> list[dict]:
    """`reset(**row)`; a returned observation joins the last message, as TRL's trainer does."""
    observation = environment.reset(**row)
    if observation is None:
        return prompt
    content = prompt[-1]["content"]
    if isinstance(observation, list) and isinstance(content, str):
        content = [{"type": "text", "text": content}]
    if isinstance(observation, str) and isinstance(content, list):
        observation = [{"type": "text", "text": observation}]
    return [*prompt[:-1], {**prompt[-1], "content": content + observation}]
