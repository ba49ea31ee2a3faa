"""Built-in answer verifiers: math, numeric, exact, choice, regex, format.

Each is a small callable class (picklable, unlike a closure, for TRL's async
rollout workers) with TRL's reward signature `(prompts, completions, answer=...)`.
A row whose `answer` is None gets None ("does not apply"), so a verifier can
share a multi-task dataset with other rewards.
"""

from __future__ import annotations

import math
import re
import threading
from fractions import Fraction
from functools import lru_cache
from typing import Any, Sequence

from ._text import (
    answer_line,
    answer_tag,
    completion_text,
    extract_final_answer,
    last_boxed,
    normalize_text,
    strip_think,
)


def _answers(answer: Any, n: int) -> list[Any]:
    """The per-sample reference answers; a clear error when the dataset has no `answer` column."""
    if answer is None:
        raise KeyError("this reward needs the dataset column 'answer' (see rlsd.data.load_dataset)")
    if isinstance(answer, (str, int, float)):
        return [answer] * n
    if len(answer) != n:
        raise ValueError(f"got {len(answer)} answers for {n} completions")
    return list(answer)


class _Verifier:
    """Shared loop: extract each completion's text and compare it with its reference answer."""

    __name__ = "verifier"

    def __call__(self, prompts: Sequence[Any], completions: Sequence[Any], answer: Any = None, **kwargs: Any) -> list:
        answers = _answers(answer, len(completions))
        return [
            None if ref is None else float(self.score(completion_text(c), str(ref)))
            for c, ref in zip(completions, answers)
        ]

    def score(self, text: str, answer: str) -> float:
        raise NotImplementedError


# ---------------------------------------------------------------------------------------------- math
class MathReward(_Verifier):
    """1.0 when the completion's final answer is mathematically equal to the reference (math-verify).

    Handles LaTeX, fractions, `\\boxed{}`, units, percentages, sets and
    intervals. math-verify's own timeouts use SIGALRM, which only works in the
    main thread; elsewhere they are switched off (the sandbox of a wrapper
    timeout then applies).
    """

    __name__ = "math"

    def __init__(self, timeout_s: int = 5, float_rounding: int = 6):
        self.timeout_s = int(timeout_s)
        self.float_rounding = float_rounding

    def score(self, text: str, answer: str) -> float:
        from math_verify import verify

        timeout = self.timeout_s if threading.current_thread() is threading.main_thread() else None
        gold = _parse_gold(answer, timeout)
        if not gold:
            raise ValueError(f"math-verify cannot parse the reference answer {answer!r}")
        pred = _parse_pred(strip_think(text), timeout)
        if not pred:
            return 0.0
        return float(verify(gold, pred, float_rounding=self.float_rounding, timeout_seconds=timeout))


_PLAIN_NUMBER = re.compile(r"[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)?(?:\.\d+)?(?:[eE][-+]?\d+)?")


@lru_cache(maxsize=4096)
def _parse_gold(answer: str, timeout: int | None) -> list:
    """Parse a reference answer once (every group repeats it G times)."""
    import sympy
    from math_verify import parse

    answer = answer.strip()
    if _PLAIN_NUMBER.fullmatch(answer) and any(ch.isdigit() for ch in answer):
        return [sympy.Rational(answer.replace(",", "")), answer]
    if any(marker in answer for marker in ("$", "\\boxed", "\\(", "\\[")):
        return parse(answer, parsing_timeout=timeout)
    return parse(f"${answer}$", parsing_timeout=timeout) or parse(answer, parsing_timeout=timeout)


def _parse_pred(text: str, timeout: int | None) -> list:
    """Parse the completion; an `<answer>` tag, if any, is where the final answer is."""
    from math_verify import parse

    tag = answer_tag(text)
    if tag is not None:
        if not any(marker in tag for marker in ("$", "\\boxed", "\\(", "\\[")):
            tag = f"${tag}$"
        return parse(tag, parsing_timeout=timeout)
    return parse(text, parsing_timeout=timeout)


# ------------------------------------------------------------------------------------------- numeric
_NUMBER_RE = re.compile(
    r"[-+]?\s*(?:\d{1,3}(?:,\d{3})+|\d+)?(?:\.\d+)?(?:[eE][-+]?\d+)?(?:\s*/\s*\d+(?:\.\d+)?)?\s*%?"
)


def parse_number(s: str) -> float | None:
    """A number written as `-1,234.5`, `3/4`, `\\frac{3}{4}`, `1e-3` or `12%` (= 0.12); None if there is none."""
    s = s.strip().replace("$", "").replace("\\!", "").replace("{,}", ",").replace("\\%", "%")
    frac = re.fullmatch(r"(-?)\\d?frac\{([^{}]+)\}\{([^{}]+)\}", s)
    if frac:
        num, den = parse_number(frac.group(2)), parse_number(frac.group(3))
        return None if num is None or not den else (-1 if frac.group(1) else 1) * num / den
    m = _NUMBER_RE.fullmatch(s)
    if not m or not any(ch.isdigit() for ch in s):
        return None
    body = s.replace(" ", "").replace(",", "")
    percent = body.endswith("%")
    body = body.rstrip("%")
    try:
        value = float(Fraction(body)) if "/" in body else float(body)
    except (ValueError, ZeroDivisionError):
        return None
    return value / 100 if percent else value


_NUMBER_IN_TEXT_RE = re.compile(
    r"-?\\d?frac\{[^{}]+\}\{[^{}]+\}|[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:[eE][-+]?\d+)?(?:\s*/\s*\d+)?%?"
)


def _numbers_in(text: str) -> list[float]:
    out = []
    for m in _NUMBER_IN_TEXT_RE.finditer(text):
        value = parse_number(m.group(0))
        if value is not None:
            out.append(value)
    return out


class NumericReward(_Verifier):
    """1.0 when the final number in the completion is within tolerance of the reference number.

    The number is the first one in the `<answer>` tag / `\\boxed{}` / `Answer:`
    line if present, else the last number in the text. Passes if
    `|x - ref| <= max(rel_tol * |ref|, abs_tol)`.
    """

    __name__ = "numeric"

    def __init__(self, rel_tol: float = 1e-4, abs_tol: float = 1e-8):
        self.rel_tol, self.abs_tol = float(rel_tol), float(abs_tol)

    def score(self, text: str, answer: str) -> float:
        ref = parse_number(answer)
        if ref is None:
            raise ValueError(f"reference answer {answer!r} is not a number")
        final = extract_final_answer(text, fallback_last_line=False)
        stated = _numbers_in(final) if final is not None else []
        value = stated[0] if stated else next(reversed(_numbers_in(strip_think(text))), None)
        if value is None:
            return 0.0
        return float(math.isclose(value, ref, rel_tol=self.rel_tol, abs_tol=self.abs_tol))


# --------------------------------------------------------------------------------------------- exact
class ExactReward(_Verifier):
    """1.0 when the final answer equals the reference, ignoring case, spacing and a trailing period."""

    __name__ = "exact"

    def score(self, text: str, answer: str) -> float:
        final = extract_final_answer(text)
        return float(final is not None and normalize_text(final) == normalize_text(answer))


# -------------------------------------------------------------------------------------------- choice
class ChoiceReward(_Verifier):
    """1.0 when the chosen option letter (A/B/C/D by default) is the reference letter."""

    __name__ = "choice"

    def __init__(self, letters: str = "ABCD"):
        self.letters = "".join(dict.fromkeys(letters.upper()))
        cls = re.escape(self.letters)
        self._alone = re.compile(rf"^\W*([{cls}])(?:\W|$)", re.IGNORECASE)
        self._said = re.compile(
            rf"(?:answer|option|choice)\s*(?:is|:)?\s*(?:option\s*)?[(\[]?\**([{cls}])\**[)\]]?(?![A-Za-z])",
            re.IGNORECASE,
        )
        self._paren = re.compile(rf"\(([{cls}])\)")

    def letter(self, text: str) -> str | None:
        """The option letter a completion commits to, or None."""
        text = strip_think(text)
        for final in (answer_tag(text), last_boxed(text), answer_line(text)):
            if final is not None:
                m = self._alone.match(final.strip().replace("\\text{", ""))
                if m:
                    return m.group(1).upper()
        said = self._said.findall(text)
        if said:
            return said[-1].upper()
        lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
        if lines:
            m = re.fullmatch(rf"\W*([{re.escape(self.letters)}])\W*", lines[-1], re.IGNORECASE)
            if m:
                return m.group(1).upper()
        paren = self._paren.findall(text.upper())
        return paren[-1] if paren else None

    def score(self, text: str, answer: str) -> float:
        ref = self.letter(answer)
        if ref is None:
            raise ValueError(f"reference answer {answer!r} is not one of the letters {self.letters}")
        return float(self.letter(text) == ref)


# --------------------------------------------------------------------------------------------- regex
class RegexReward(_Verifier):
    """Pattern-based check. With a capture group (or a group named `answer`), 1.0 when the last match's
    group equals the reference (normalised like `exact`); without groups, 1.0 when the pattern matches."""

    __name__ = "regex"

    def __init__(self, pattern: str, flags: str = ""):
        if not pattern:
            raise ValueError("the regex reward needs a pattern, e.g. get_reward('regex', pattern=r'Result: (\\d+)')")
        bits = {"i": re.IGNORECASE, "m": re.MULTILINE, "s": re.DOTALL}
        value = 0
        for flag in flags:
            if flag not in bits:
                raise ValueError(f"unknown regex flag {flag!r}: use any of 'i', 'm', 's'")
            value |= bits[flag]
        self.pattern, self.flags = pattern, flags
        self._re = re.compile(pattern, value)

    def score(self, text: str, answer: str) -> float:
        matches = list(self._re.finditer(strip_think(text)))
        if not matches:
            return 0.0
        if self._re.groups == 0:
            return 1.0
        last = matches[-1]
        got = last.group("answer") if "answer" in self._re.groupindex else last.group(1)
        return float(got is not None and normalize_text(got) == normalize_text(answer))


# -------------------------------------------------------------------------------------------- format
class FormatReward:
    """1.0 when the completion states a final answer in a findable form (`<answer>` tag, `\\boxed{}`,
    or an `Answer:` line); needs no reference answer. `require_think=True` also asks for `<think>...</think>`."""

    __name__ = "format"

    def __init__(self, require_think: bool = False):
        self.require_think = bool(require_think)

    def __call__(self, prompts: Sequence[Any], completions: Sequence[Any], **kwargs: Any) -> list[float]:
        return [self.score(completion_text(c)) for c in completions]

    def score(self, text: str) -> float:
        if self.require_think and not re.search(r"<think>.+?</think>", text, re.DOTALL | re.IGNORECASE):
            return 0.0
        return float(extract_final_answer(text, fallback_last_line=False) is not None)
