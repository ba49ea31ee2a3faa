"""The teacher: the model shown the privileged reference, and everything about its forward pass.

- `prompts`: privileged templates, the teacher prompt of a row, `with_reference`, leak checks.
- `weights`: which weights the teacher runs with (live, ema, base, snapshot, external for OPD).
- `shared_prefix`: one forward per distinct teacher prompt, its KV cache reused by every completion.
- `images`: the processor's multimodal fields for the teacher's rows (the same images as the student's).
- `scoring`: `TeacherPass`, the public teacher forward every algorithm calls.

`rlsd.teacher.<name>` names the prompt functions, as before the package existed.
"""

from .prompts import (DEFAULT_LEAKAGE_PATTERNS, TEMPLATE_ANSWER, TEMPLATE_SOLUTION, TEMPLATE_SOLUTION_ANSWER,
                      assert_student_blind, default_template, leakage_flags, privileged_block, prompt_text, render,
                      shorten_privileged, teacher_prompt, template_fields, with_reference)

__all__ = ["DEFAULT_LEAKAGE_PATTERNS", "TEMPLATE_ANSWER", "TEMPLATE_SOLUTION", "TEMPLATE_SOLUTION_ANSWER",
           "assert_student_blind", "default_template", "leakage_flags", "privileged_block", "prompt_text", "render",
           "shorten_privileged", "teacher_prompt", "template_fields", "with_reference"]
