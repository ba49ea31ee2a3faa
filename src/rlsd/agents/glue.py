"""Agents: RLSD (and every teacher-pass algorithm) over multi-turn, tool-using rollouts.

TRL's `GRPOTrainer` runs the tool loop (`tools=`, `environment_factory=`): a completion is
`agent turn, tool result, agent turn, ...` as one token sequence, and `tool_mask` is 0 on the
tool-result tokens (with the chat-template glue around them), 1 on the agent's own tokens. What
rlsd adds, kept here so the trainer only calls in:

- **Teacher rows** (`teacher_rows`): the teacher prompt is the student's prompt exactly as it was
  rolled out (after the environment's `reset()` observation was appended, rendered with the same tool
  list) plus the privileged text, from dataset columns or from the environment's
  `_privileged_context()` hook. The teacher then scores the whole multi-turn completion, tool results
  included as context, in one forward.
- **Credit only on agent tokens**: the trainer's loss mask is `completion_mask * tool_mask` for every
  algorithm, so tool-result tokens get no advantage, no distillation term and no RLSD statistics.
- **Metrics** (`annotate_rollouts`, `log_weight_split`): turns per episode, share of tool-result
  tokens, and RLSD's mean token weight on tool-call tokens vs the agent's other (reasoning) tokens.
- **Loaders** (`load_tools`, `load_environment`): `tools: ["my_tools.py:calculator"]` and
  `environment: "my_env.py:MyEnv"` in a run config, with one-line errors.

The privileged hook is `_privileged_context()`, with a leading underscore on purpose: TRL exposes every
public method of an environment to the agent as a tool, so a public `privileged_context()` would let the
agent call for the very text it must not see (`check_environment` refuses one).
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

from ..rewards.importing import RewardError, import_reward
from .rollout import environment_tool_names

PRIVILEGED_HOOK = "_privileged_context"
# Fallback only, for a tokenizer without a response parser (`response_template`/`response_schema`): where a tool
# call starts in the templates this package knows (its tiny template, Qwen/Hermes style, Gemma 4, Llama 3.1),
# matched as token-id sequences of the marker encoded alone. See `tool_call_finder`.
TOOL_CALL_MARKERS = ("<call>", "<tool_call>", "<|tool_call>", "<|python_tag|>")
CallFinder = Callable[[list[int]], "int | None"]  # an agent turn's token ids -> index of its first tool-call token


# ---- pure functions: tensors in, tensors out ----------------------------------------------------------------------
def agent_turn_counts(tool_mask: torch.Tensor, completion_mask: torch.Tensor) -> torch.Tensor:
    """Agent turns per completion: maximal runs of agent tokens (tool_mask 1) inside the completion.

    tool_mask, completion_mask: (B, T) 0/1. Returns (B,) long.
    """
    agent = (tool_mask * completion_mask).bool()
    starts = agent.clone()
    starts[:, 1:] = agent[:, 1:] & ~agent[:, :-1]
    return starts.sum(dim=1)


def tool_call_token_mask(completion_ids: torch.Tensor, tool_mask: torch.Tensor, completion_mask: torch.Tensor,
                         find_call: CallFinder | Sequence[Sequence[int]]) -> torch.Tensor:
    """Which agent tokens belong to a tool call: from where a turn that a tool result follows starts its call, to
    that turn's end. Every other agent token is reasoning/answer text.

    completion_ids, tool_mask, completion_mask: (B, T). find_call: the turn's token ids -> the index of its first
    tool-call token or None (`tool_call_finder`), or token-id sequences that open a call (the first one found).
    Returns (B, T) bool, False outside agent tokens.
    """
    if not callable(find_call):
        find_call = marker_finder(find_call)
    agent = (tool_mask * completion_mask).bool().tolist()
    tool = ((1 - tool_mask) * completion_mask).bool().tolist()
    ids = completion_ids.tolist()
    out = torch.zeros(completion_ids.shape, dtype=torch.bool)
    for row in range(len(ids)):
        t, length = 0, len(ids[row])
        while t < length:
            if not agent[row][t]:
                t += 1
                continue
            end = t
            while end < length and agent[row][end]:
                end += 1
            if end < length and tool[row][end]:  # this turn handed over to a tool
                first = find_call(ids[row][t:end])
                if first is not None:
                    out[row, t + first:end] = True
            t = end
    return out.to(completion_ids.device)


def marker_finder(marker_ids: Sequence[Sequence[int]]) -> CallFinder:
    """A `CallFinder` that looks for the earliest of some token-id sequences (the fallback heuristic)."""
    markers = [list(m) for m in marker_ids if len(m)]

    def find(ids: list[int]) -> int | None:
        return min((s for m in markers for s in range(len(ids) - len(m) + 1) if ids[s:s + len(m)] == m), default=None)

    return find


def response_parser_call_start(tokenizer) -> Callable[[str], "int | None"] | None:
    """Where the tokenizer's own response parser sees a tool call begin in a turn's text, or None without a parser.

    The parser is the one TRL parses tool calls with (`trl.chat_template_utils.parse_response`): a new-style
    `response_template` (its `tool_calls` field's `open_pattern`, compiled as transformers compiles it) or a legacy
    `response_schema` (where its `x-regex` puts the `tool_calls` group). Returns text -> character index or None.
    """
    template = getattr(tokenizer, "response_template", None)
    if template is not None:
        from transformers.utils.chat_parsing.response_templates import load_response_template

        field = load_response_template(template).fields.get("tool_calls")
        opener = getattr(field, "open_re", None)
        if opener is None:
            return None
        return lambda text: (m.start() if (m := opener.search(text)) else None)
    schema = getattr(tokenizer, "response_schema", None)
    pattern = schema.get("x-regex") if isinstance(schema, Mapping) else None
    if pattern and "(?P<tool_calls>" in pattern:
        import re

        compiled = re.compile(pattern, re.DOTALL)
        return lambda text: (m.start("tool_calls") if (m := compiled.search(text)) and m.group("tool_calls")
                             else None)
    return None


def tool_call_finder(tokenizer) -> CallFinder:
    """A `CallFinder` for `tokenizer`: from its response parser when it has one, else the opener heuristics.

    The parser works on text; the call's first character is mapped back to the token holding it (the shortest
    prefix of the turn whose decoded text reaches past that character).
    """
    call_start = response_parser_call_start(tokenizer)
    if call_start is None:
        markers = [tokenizer(m, add_special_tokens=False)["input_ids"] for m in TOOL_CALL_MARKERS]
        return marker_finder([m for m in markers if m and tokenizer.unk_token_id not in m])

    def decoded_length(ids: list[int]) -> int:
        return len(tokenizer.decode(ids, skip_special_tokens=False))

    def find(ids: list[int]) -> int | None:
        start = call_start(tokenizer.decode(ids, skip_special_tokens=False))
        if start is None:
            return None
        low, high = 0, len(ids) - 1  # the smallest k with decoded_length(ids[:k + 1]) > start
        while low < high:
            middle = (low + high) // 2
            if decoded_length(ids[:middle + 1]) > start:
                high = middle
            else:
                low = middle + 1
        return low

    return find


def kind_split(values: torch.Tensor, agent_mask: torch.Tensor, tool_call_mask: torch.Tensor) -> dict[str, torch.Tensor]:
    """Sums and counts of a per-token signal on tool-call vs other agent tokens (reasoning, answer text).

    values, agent_mask, tool_call_mask: (B, T). Tokens outside `agent_mask` (tool results, padding) are never
    counted, whatever `values` holds there. Returns 0-d tensors: tool_call_sum, tool_call_count, reasoning_sum,
    reasoning_count.
    """
    agent = agent_mask.bool()
    call = agent & tool_call_mask.bool()
    reason = agent & ~tool_call_mask.bool()
    values = values.detach().float()
    return {"tool_call_sum": torch.where(call, values, 0.0).sum(), "tool_call_count": call.sum().float(),
            "reasoning_sum": torch.where(reason, values, 0.0).sum(), "reasoning_count": reason.sum().float()}


def weight_split(token_advantages: torch.Tensor, sequence_advantages: torch.Tensor, agent_mask: torch.Tensor,
                 tool_call_mask: torch.Tensor) -> dict[str, torch.Tensor]:
    """Sums and counts of RLSD's token weight `w_t = A_t / A` on tool-call vs other agent tokens.

    token_advantages, agent_mask, tool_call_mask: (B, T); sequence_advantages: (B,). Only rows with A != 0 act
    (their weight is defined); tool-result tokens are outside `agent_mask` and never counted.
    Returns 0-d tensors: tool_call_sum, tool_call_count, reasoning_sum, reasoning_count.
    """
    seq = sequence_advantages.reshape(-1, 1)
    acting = agent_mask.bool() & (seq != 0)
    weight = torch.where(acting, token_advantages / torch.where(seq != 0, seq, torch.ones_like(seq)), 0.0)
    return kind_split(weight, acting, tool_call_mask)


# ---- trainer glue ---------------------------------------------------------------------------------------------------
def is_agent_run(trainer) -> bool:
    return bool(getattr(trainer, "tools", None)) or getattr(trainer, "environment_factories", None) is not None


def student_prompts(trainer, prompts: list) -> list | None:
    """A copy of the prompts TRL is about to roll out (after `reset()`), for the teacher; None outside agent runs."""
    return copy.deepcopy(prompts) if is_agent_run(trainer) else None


def privileged_from_environment(environment_factory) -> bool:
    """Whether some environment may supply privileged fields (then dataset columns are checked per batch)."""
    if environment_factory is None:
        return False
    factories = environment_factory.values() if isinstance(environment_factory, Mapping) else [environment_factory]
    return any(not inspect.isclass(f) or callable(getattr(f, PRIVILEGED_HOOK, None)) for f in factories)


def check_environment(environment_factory, args=None) -> None:
    """Refuse an environment class whose privileged hook TRL would hand to the agent as a tool, or whose hook is
    annotated `-> str` (the `solution` field) while `args.privileged_fields` would never show that to the teacher."""
    if environment_factory is None:
        return
    factories = environment_factory.values() if isinstance(environment_factory, Mapping) else [environment_factory]
    for factory in factories:
        if inspect.isclass(factory) and inspect.isfunction(getattr(factory, "privileged_context", None)):
            raise ValueError(
                f"environment {factory.__name__}: rename privileged_context() to {PRIVILEGED_HOOK}(); TRL exposes "
                "every public method to the agent as a tool, so the agent could call for the privileged text")
        hook = getattr(factory, PRIVILEGED_HOOK, None) if inspect.isclass(factory) else None
        if args is not None and inspect.isfunction(hook) and \
                inspect.signature(hook).return_annotation in (str, "str"):
            message = _unshown_context(args, {"solution": ""}, f"{factory.__name__}.{PRIVILEGED_HOOK}() -> str")
            if message:
                raise ValueError(message)


def _unshown_context(args, context: Mapping[str, Any], source: str) -> str | None:
    """A one-line error when privileged text from `source` would never reach the teacher, else None."""
    if not args.uses_privileged_teacher:
        return None
    shown = list(args.privileged_fields)
    dropped = [f for f in context if f not in shown]
    if not dropped:
        return None
    what = "a string (the 'solution' field)" if list(context) == ["solution"] and "-> str" not in source \
        else f"field(s) {dropped}"
    return (f"RLSDConfig.privileged_fields={shown}: {source} gives {what} that the teacher would never see; "
            f"add it: privileged_fields={shown + dropped}")


def teacher_rows(trainer, inputs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The rows the teacher prompt is built from: in an agent run, each row's prompt is the one actually rolled out,
    and the environment's `_privileged_context()` fills or overrides privileged fields. Other runs: `inputs`."""
    prompts = getattr(trainer, "_student_prompts", None)
    if not is_agent_run(trainer) or prompts is None:
        return inputs
    environments = getattr(trainer, "environments", None) or [None] * len(inputs)
    fields = trainer.args.privileged_columns
    rows = []
    for number, (row, prompt, environment) in enumerate(zip(inputs, prompts, environments, strict=True)):
        row = {**row, "prompt": prompt}
        hook = getattr(environment, PRIVILEGED_HOOK, None)
        if callable(hook):
            context = _privileged_fields(hook(), type(environment).__name__)
            unshown = _unshown_context(trainer.args, context, f"{type(environment).__name__}.{PRIVILEGED_HOOK}()")
            if unshown:  # never drop the environment's privileged text silently
                raise ValueError(unshown)
            row.update(context)
        missing = [f for f in fields if f not in row]
        if missing:
            source = f" nor {type(environment).__name__}.{PRIVILEGED_HOOK}()" if environment is not None else ""
            raise ValueError(f"RLSDConfig.privileged_fields: rollout {number} has no {missing}: neither the dataset "
                             f"row{source} provides it")
        rows.append(row)
    return rows


def _privileged_fields(value: Any, owner: str) -> dict[str, Any]:
    """`_privileged_context()` returns a dict of privileged fields, or a string (the `solution` field)."""
    if isinstance(value, str):
        return {"solution": value}
    if isinstance(value, Mapping):
        return dict(value)
    if value is None:
        return {}
    raise TypeError(f"{owner}.{PRIVILEGED_HOOK}() must return a str or a dict of fields, got {type(value).__name__}")


def annotate_rollouts(trainer, output: dict[str, Any]) -> None:
    """Add `tool_call_mask` (B, T) to a multi-turn batch and log turns and tool-result share; no-op otherwise."""
    tool_mask = output.get("tool_mask")
    if tool_mask is None:
        return
    completion_mask = output["completion_mask"]
    find_call = getattr(trainer, "_tool_call_finder", None)
    if find_call is None:
        find_call = trainer._tool_call_finder = tool_call_finder(trainer._tokenizer)
    output["tool_call_mask"] = tool_call_token_mask(output["completion_ids"], tool_mask, completion_mask,
                                                    find_call).long()
    tokens = completion_mask.sum().clamp(min=1)
    _log(trainer, "agent/turns", agent_turn_counts(tool_mask, completion_mask).float().mean())
    _log(trainer, "agent/tool_output_frac", ((1 - tool_mask) * completion_mask).sum() / tokens)
    _log(trainer, "agent/tool_call_token_frac", output["tool_call_mask"].sum() / tokens)


def log_weight_split(trainer, inputs: dict[str, Any], token_advantages: torch.Tensor, agent_mask: torch.Tensor) -> None:
    """`rlsd/weight_tool_call` and `rlsd/weight_reasoning`: mean token weight per kind over all processes."""
    kind = inputs.get("tool_call_mask")
    if kind is None:
        return
    _log_split(trainer, weight_split(token_advantages, inputs["sequence_advantages"], agent_mask, kind), "rlsd/weight")


def log_kind_split(trainer, inputs: dict[str, Any], values: torch.Tensor, agent_mask: torch.Tensor, name: str) -> None:
    """`{name}_tool_call` and `{name}_reasoning`: the mean of a per-token teacher signal (a distillation
    divergence, a teacher-minus-student log-prob) per kind of agent token, over all processes; agent runs only."""
    kind = inputs.get("tool_call_mask")
    if kind is None:
        return
    _log_split(trainer, kind_split(values, agent_mask, kind), name)


def _log_split(trainer, parts: dict[str, torch.Tensor], name: str) -> None:
    local = torch.stack([parts["tool_call_sum"], parts["tool_call_count"], parts["reasoning_sum"],
                         parts["reasoning_count"]]).float().to(trainer.accelerator.device)
    call_sum, call_count, reason_sum, reason_count = trainer.accelerator.reduce(local, "sum").tolist()
    metrics = trainer._metrics["train" if trainer.model.training else "eval"]
    if call_count:
        metrics[f"{name}_tool_call"].append(call_sum / call_count)
    if reason_count:
        metrics[f"{name}_reasoning"].append(reason_sum / reason_count)


def _log(trainer, name: str, value: torch.Tensor) -> None:
    mode = "train" if trainer.model.training else "eval"
    value = value.detach().float().reshape(1).to(trainer.accelerator.device)
    trainer._metrics[mode][name].append(trainer.accelerator.gather(value).mean().item())


# ---- tools and environments by import path --------------------------------------------------------------------------
def load_tools(specs: Sequence[str] | str | None) -> list[Callable]:
    """`["my_tools.py:calculator", "pkg.mod:lookup"]` -> the functions, each checked for a usable tool schema."""
    if not specs:
        return []
    if isinstance(specs, str):
        specs = [s.strip() for s in specs.split(",") if s.strip()]
    return [check_tool(_import(spec, "tools"), f"tools: {spec!r}") for spec in specs]


def check_tool(fn: Any, where: str) -> Callable:
    """A tool must be a function with type hints and a docstring describing its arguments (TRL builds the schema
    the model sees from them); anything else is a one-line ValueError naming `where`."""
    from transformers.utils import get_json_schema

    if inspect.isclass(fn) or not callable(fn):
        raise ValueError(f"{where}: a tool must be a function, got {type(fn).__name__}")
    try:
        get_json_schema(fn)
    except Exception as err:  # transformers raises its own parsing exceptions
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(f"{where}: not usable as a tool: {first}") from None
    return fn


def load_environment(spec: str | None):
    """`"my_env.py:MyEnv"` -> the environment class (or factory): it needs `reset`, and its public methods must be
    valid tools."""
    if not spec:
        return None
    where = f"environment: {spec!r}"
    factory = _import(spec, "environment")
    if not callable(factory):
        raise ValueError(f"{where}: expected a class or a factory function, got {type(factory).__name__}")
    if inspect.isclass(factory):
        if not inspect.isfunction(getattr(factory, "reset", None)):
            raise ValueError(f"{where}: {factory.__name__} has no reset() method (TRL calls it before each rollout)")
        check_environment(factory)
        for name in environment_tool_names(factory):  # bound: no `self` in the schema
            check_tool(getattr(factory, name).__get__(object()), f"{where}: method {name}")
    return factory


def _import(spec: str, what: str):
    try:
        return import_reward(spec, what=what)
    except RewardError as err:
        raise ValueError(str(err)) from None


__all__ = ["PRIVILEGED_HOOK", "TOOL_CALL_MARKERS", "agent_turn_counts", "annotate_rollouts", "check_environment",
           "check_tool", "kind_split", "load_environment", "load_tools", "log_kind_split", "log_weight_split",
           "marker_finder", "response_parser_call_start", "teacher_rows", "tool_call_finder", "tool_call_token_mask",
           "weight_split"]
