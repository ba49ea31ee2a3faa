"""The privileged teacher context: templates, teacher prompts, leak checks.

The teacher is the same model as the student, shown the prompt `x` plus the
privileged information `r` (reference answer and/or worked solution). Only
the prompt differs between the two passes; the completion tokens are the
student's own. For chat prompts `r` goes inside the last user message, so
the completion follows the same assistant header in both passes.
"""

from __future__ import annotations

import re
import string
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

Prompt = str | list[dict[str, Any]]

TEMPLATE_ANSWER = "{prompt}\n\nThe reference final answer (for grading, do not copy): {answer}"
TEMPLATE_SOLUTION = "{prompt}\n\nA reference solution (for grading, do not copy): {solution}"
TEMPLATE_SOLUTION_ANSWER = (
    "{prompt}\n\nA reference solution (for grading, do not copy): {solution}\nFinal answer: {answer}"
)
# Phrases only the teacher's context contains: a student that writes them has
# learned to imitate the privileged context (leakage), not to solve the task.
DEFAULT_LEAKAGE_PATTERNS = (r"reference (solution|answer)", r"for grading", r"do not copy")


def default_template(privileged_fields: Sequence[str]) -> str:
    fields = set(privileged_fields)
    if fields == {"answer"}:
        return TEMPLATE_ANSWER
    if fields == {"solution"}:
        return TEMPLATE_SOLUTION
    if fields == {"answer", "solution"}:
        return TEMPLATE_SOLUTION_ANSWER
    # Arbitrary privileged columns: list them after the prompt.
    return "{prompt}\n\n" + "\n".join(f"Reference {f} (for grading, do not copy): {{{f}}}" for f in privileged_fields)


def template_fields(template: str) -> list[str]:
    """Names of the `{field}` placeholders in a template (ValueError on bad syntax)."""
    try:
        return [name for _, name, _, _ in string.Formatter().parse(template) if name is not None]
    except ValueError as err:
        raise ValueError(f"RLSDConfig.teacher_template is not a valid format string: {err}") from None


def render(template: str, prompt_text: str, row: Mapping[str, Any]) -> str:
    values = {name: "" if row.get(name) is None else str(row[name]) for name in template_fields(template)}
    values["prompt"] = prompt_text
    return template.format(**values)


def teacher_prompt(prompt: Prompt, row: Mapping[str, Any], template: str) -> Prompt:
    """The teacher's prompt: `prompt` with the privileged text placed per `template`.

    Plain-text prompts are rendered whole. For chat prompts only the content of
    the last user message is rendered; every other message is kept as is.
    """
    if isinstance(prompt, str):
        return render(template, prompt, row)
    last_user = max((i for i, m in enumerate(prompt) if m.get("role") == "user"), default=None)
    if last_user is None:
        raise ValueError("a chat prompt needs a user message to carry the privileged text")
    content = prompt[last_user]["content"]
    if not isinstance(content, str):
        # Multimodal content blocks: append the privileged text as one more text block.
        text = render(template, "", row)
        new_content = [*content, {"type": "text", "text": text}]
    else:
        new_content = render(template, content, row)
    messages = [dict(m) for m in prompt]
    messages[last_user]["content"] = new_content
    return messages


def with_reference(rows: Sequence[Mapping[str, Any]], fields: Sequence[str]) -> list[dict[str, Any]]:
    """`rows` with each prompt as RLSD's teacher sees it: `fields` added with the default template.

    Evaluating these shows whether a model can use the reference at all (ValueError if a row lacks a field).
    """
    for number, row in enumerate(rows, start=1):
        for name in fields:
            if row.get(name) in (None, ""):
                raise ValueError(f"row {number} has no value in field {name!r}")
    template = default_template(fields)
    return [{**row, "prompt": teacher_prompt(row["prompt"], row, template)} for row in rows]


def privileged_block(template: str, row: Mapping[str, Any]) -> str:
    """The text the template adds around an empty prompt: what the student must never see."""
    return render(template, "", row).strip()


def prompt_text(prompt: Prompt) -> str:
    """All text of a prompt, messages and content blocks joined by newlines (what leakage checks search)."""
    if isinstance(prompt, str):
        return prompt
    parts = []
    for message in prompt:
        content = message.get("content")
        if isinstance(content, str):
            parts.append(content)
        elif isinstance(content, list):
            parts.extend(block.get("text", "") for block in content if isinstance(block, dict))
    return "\n".join(parts)


def assert_student_blind(student_prompts: Iterable[Prompt], rows: Iterable[Mapping[str, Any]], template: str) -> None:
    """Raise if any student prompt contains its row's privileged block (SPEC property 6)."""
    for i, (prompt, row) in enumerate(zip(student_prompts, rows, strict=True)):
        block = privileged_block(template, row)
        if block and block in prompt_text(prompt):
            raise RuntimeError(
                f"privileged text reached the student prompt (completion {i}): the prompt column must not "
                "contain the reference answer/solution block"
            )


def shorten_privileged(row: Mapping[str, Any], fields: Sequence[str], overflow_chars: int) -> dict[str, Any]:
    """Copy of `row` with `overflow_chars` cut from the end of its privileged fields, longest first."""
    row = dict(row)
    for name in sorted(fields, key=lambda f: -len(str(row.get(f) or ""))):
        if overflow_chars <= 0:
            break
        text = str(row.get(name) or "")
        cut = min(len(text), overflow_chars)
        row[name] = text[: len(text) - cut]
        overflow_chars -= cut
    return row


def leakage_flags(
    completions: Sequence[str],
    answers: Sequence[Any] | None,
    patterns: Sequence[str] = DEFAULT_LEAKAGE_PATTERNS,
    min_derivation_chars: int = 0,
) -> list[bool]:
    """Which completions look leaked from the teacher's privileged context.

    A completion is flagged if it matches any of `patterns` (case-insensitive
    regexes for phrasing only the teacher saw), or, when `min_derivation_chars`
    > 0, if it states the reference answer with fewer than that many other
    non-space characters around it (an answer with no derivation).
    """
    compiled = [re.compile(p, re.IGNORECASE) for p in patterns]
    flags = []
    for i, text in enumerate(completions):
        leaked = any(p.search(text) for p in compiled)
        if not leaked and min_derivation_chars > 0 and answers is not None:
            answer = str(answers[i]).strip()
            if answer and answer in text:
                rest = re.sub(r"\s+", "", text.replace(answer, "", 1))
                leaked = len(rest) < min_derivation_chars
        flags.append(leaked)
    return flags
