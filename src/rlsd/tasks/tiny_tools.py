"""A tiny char-level tokenizer whose chat template renders tools, tool calls and tool results.

Same vocabulary as `tiny.build_char_tokenizer` (so tiny models and OPD teachers stay interchangeable), with
a compact ChatML template that TRL's multi-turn tool loop accepts: it renders the tool list, assistant tool
calls and `tool` messages (`trl.chat_template_utils.supports_tool_calling`), earlier turns never change when
a turn is added (`is_chat_template_prefix_preserving`), and a `response_template` lets
`tokenizer.parse_response` turn generated text back into `tool_calls`. Compact on purpose: every character
is a token here, so `<call>price{"item":"pen"}</call>` beats a JSON schema block.

    <|im_start|>system
    Tools: price(item) calc(expr)<|im_end|>
    <|im_start|>user
    Cost of 3 pen?<|im_end|>
    <|im_start|>assistant
    <call>price{"item":"pen"}</call><|im_end|>
    <|im_start|>tool
    13<|im_end|>
    <|im_start|>assistant
    Answer: 39<|im_end|>
"""

from __future__ import annotations

from transformers import PreTrainedTokenizerFast

from .tiny import build_char_tokenizer

TOOL_CALL_OPEN = "<call>"
TOOL_CHAT_TEMPLATE = (
    "{% if tools %}{{ '<|im_start|>system\\nTools:' }}{% for t in tools %}"
    "{% set f = t.function if t.function is defined else t %}"
    "{{ ' ' + f.name + '(' + (f.parameters.properties | list | join(',')) + ')' }}"
    "{% endfor %}{{ '<|im_end|>\\n' }}{% endif %}"
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' }}"
    "{% if message['content'] is string %}{{ message['content'] }}{% endif %}"
    "{% if message.tool_calls is defined and message.tool_calls %}{% for tc in message.tool_calls %}"
    "{% set f = tc.function if tc.function is defined else tc %}"
    "{{ '<call>' + f.name }}"
    "{% if f.arguments is string %}{{ f.arguments }}{% else %}{{ f.arguments | tojson(separators=(',', ':')) }}{% endif %}"
    "{{ '</call>' }}{% endfor %}{% endif %}"
    "{{ '<|im_end|>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
# transformers' response parsing: text before `<call>` is content, each `<call>NAME{json}</call>` one tool call.
TOOL_RESPONSE_TEMPLATE = {
    "defaults": {"role": "assistant"},
    "start_anchor": "<|im_start|>assistant\n",
    "fields": {
        "tool_calls": {
            "open_pattern": r"<call>(?P<name>\w+)",
            "close_pattern": r"</call>",
            "repeats": True,
            "content": "json",
            "transform": {"type": "function", "function": {"name": "{name}", "arguments": "{content}"}},
        },
        "content": {"close_pattern": r"<\|im_end\|>\s*|$", "content": "text"},
    },
}


def build_tool_tokenizer() -> PreTrainedTokenizerFast:
    """The char-level tokenizer with the tool-calling template and its response parser (saved with it)."""
    tokenizer = build_char_tokenizer()
    tokenizer.chat_template = TOOL_CHAT_TEMPLATE
    tokenizer.response_template = TOOL_RESPONSE_TEMPLATE
    return tokenizer
