"""Text helpers shared by the verifiers: completion text, final-answer and code extraction.

Kept separate so each verifier states only *how it compares*, while *where the
answer is* is decided once, the same way for every reward.
"""

from __future__ import annotations

import re
from typing import Any

_THINK_RE = re.compile(r"<think>.*?(?:</think>|\Z)", re.DOTALL | re.IGNORECASE)
_TAG_RE = re.compile(r"<answer>(.*?)(?:</answer>|\Z)", re.DOTALL | re.IGNORECASE)
_ANSWER_LINE_RE = re.compile(
    r"(?:final\s+answer|answer)\s*(?:is)?\s*[:：]\s*([^\n]*)|the\s+(?:final\s+)?answer\s+is\s*[:：]?\s*([^\n]*)",
    re.IGNORECASE,
)
_BOXED_RE = re.compile(r"\\(?:boxed|fbox)\s*\{")
_TASK_ANSWER_RE = re.compile(r"Answer:[ \t]*([^\n]*)")
_FENCE_RE = re.compile(r"```[ \t]*([A-Za-z0-9_+-]*)[^\n]*\n(.*?)(?:```|\Z)", re.DOTALL)


def completion_text(completion: Any) -> str:
    """The text of a completion, whether TRL gives a string or a list of chat messages."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, dict):
        return _content_text(completion.get("content"))
    if isinstance(completion, (list, tuple)):
        parts = [
            _content_text(m.get("content")) if isinstance(m, dict) else str(m)
            for m in completion
            if not isinstance(m, dict) or m.get("role", "assistant") == "assistant"
        ]
        return "\n".join(p for p in parts if p)
    return "" if completion is None else str(completion)


def _content_text(content: Any) -> str:
    """Message content may be a string or a list of typed parts (`{"type": "text", "text": ...}`)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict))
    return "" if content is None else str(content)


def strip_think(text: str) -> str:
    """Drop `<think>...</think>` blocks: an answer only counts when the model commits to it outside."""
    return _THINK_RE.sub("", text)


def last_boxed(text: str) -> str | None:
    """Content of the last `\\boxed{...}` (balanced braces), or None."""
    starts = [m.end() for m in _BOXED_RE.finditer(text)]
    for start in reversed(starts):
        depth, i = 1, start
        while i < len(text):
            if text[i] == "{":
                depth += 1
            elif text[i] == "}":
                depth -= 1
                if depth == 0:
                    return text[start:i].strip()
            i += 1
    return None


def answer_tag(text: str) -> str | None:
    """Content of the last `<answer>...</answer>` tag, or None."""
    found = _TAG_RE.findall(text)
    return found[-1].strip() if found else None


def answer_line(text: str) -> str | None:
    """The rest of the last line saying `Answer: ...` / `The answer is ...`, or None."""
    found = [a or b for a, b in _ANSWER_LINE_RE.findall(text)]
    found = [f.strip() for f in found if f.strip()]
    return found[-1] if found else None


def extract_final_answer(text: str, *, fallback_last_line: bool = True) -> str | None:
    """The model's final answer: `<answer>` tag, else `\\boxed{}`, else `Answer:` line, else last line."""
    text = strip_think(text)
    tag = answer_tag(text)
    if tag is not None:
        inner = last_boxed(tag)
        return inner if inner is not None else tag
    for found in (last_boxed(text), answer_line(text)):
        if found is not None:
            return found
    if fallback_last_line:
        lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
        return lines[-1] if lines else None
    return None


def has_final_answer_marker(text: str) -> bool:
    """True when the completion commits to an answer in a form a verifier can find."""
    return extract_final_answer(text, fallback_last_line=False) is not None


def normalize_text(s: str) -> str:
    """Case-, whitespace- and trailing-period-insensitive form, minus `$...$` and `**...**` wrappers."""
    s = " ".join(str(s).split()).casefold()
    for _ in range(2):
        for left, right in (("$", "$"), ("**", "**"), ("`", "`"), ("\\(", "\\)")):
            if len(s) >= len(left) + len(right) and s.startswith(left) and s.endswith(right):
                s = s[len(left) : len(s) - len(right)].strip()
        s = s.rstrip(".").strip()
    text_cmd = re.fullmatch(r"\\text\{(.*)\}", s)
    return text_cmd.group(1).strip() if text_cmd else s


def extract_code(text: str) -> str:
    """The code to run: the last ```python block, else the last fenced block, else the whole text."""
    text = strip_think(text)
    blocks = _FENCE_RE.findall(text)
    python = [code for lang, code in blocks if lang.lower() in ("python", "py", "python3")]
    if python:
        return python[-1]
    if blocks:
        return blocks[-1][1]
    return text


def extract_answer(text: Any) -> str | None:
    """The built-in tasks' answer: what follows a completion's last `Answer:` marker, or None.

    Stricter than `extract_final_answer` (no boxed, tag or last-line fallback): the tasks' reward, evaluation and
    agent records all read it this way.
    """
    found = _TASK_ANSWER_RE.findall(completion_text(text))
    if not found:
        return None
    answer = found[-1].strip().rstrip(".").strip()
    return answer or None


def normalize_answer(answer: str | None) -> str | None:
    """Canonical form for exact-match comparison: no spaces; integers as Python writes them."""
    if answer is None:
        return None
    compact = re.sub(r"\s+", "", str(answer))
    if re.fullmatch(r"[+-]?\d+", compact):
        return str(int(compact))
    return compact
