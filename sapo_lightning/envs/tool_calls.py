"""The tool calls of a turn's text, in the chat template's own format.

transformers (>= 5.13) turns a model's output back into a message with a *response template*: a
declarative description of the format (``transformers.utils.chat_parsing.parse_response``; a
tokenizer may ship its own as ``tokenizer.response_template``). :func:`parse_tool_calls` uses it
when transformers has it. :data:`HERMES` is the template of the Hermes format, which Qwen 2.5 / 3,
Hermes and SmolLM3 chat templates use::

    <tool_call>
    {"name": "add", "arguments": {"a": 2, "b": 3}}
    </tool_call>

Without transformers' parser, the Hermes format is read by a regular expression (:func:`hermes_tool_calls`):
the JSON between ``<tool_call>`` and ``</tool_call>`` (or the end of the text), outside ``<think>...</think>``.
"""

from __future__ import annotations

import json
import re
from typing import Any

try:
    from transformers.utils.chat_parsing import parse_response
except ImportError:  # transformers < 5.13, or none
    parse_response = None

HERMES: dict[str, Any] = {
    "defaults": {"role": "assistant"},
    "start_anchor": "<|im_start|>assistant\n",
    "fields": {
        "reasoning_content": {"open": "<think>", "close": "</think>", "content": "text"},
        "tool_calls": {
            "open_pattern": r"\s*<tool_call>",  # the \s* keeps the newline between two calls out of content
            "close": "</tool_call>",
            "repeats": True,
            "content": "json",
            "transform": {"type": "function", "function": "{content}"},
        },
        "content": {"close_pattern": r"\s*(?:<\|im_end\|>|<\|endoftext\|>)", "content": "text"},
    },
}
HERMES_CALL = re.compile(r"<tool_call>\s*(.*?)\s*(?:</tool_call>|\Z)", re.DOTALL)
THINKING = re.compile(r"<think>.*?(?:</think>|\Z)", re.DOTALL)


def parse_tool_calls(text: str, template: dict[str, Any] | None = None,
                     tools: list[dict[str, Any]] | None = None) -> list[Any]:
    """The tool calls in ``text``, each as the model wrote it (``{"name": ..., "arguments": ...}`` when
    well formed), in order; ValueError when a call is not valid JSON.

    Args:
        text: One turn of the policy, decoded.
        template: A response template (transformers' format); None: :data:`HERMES`.
        tools: The tools' JSON schemas: transformers casts arguments to their types (``"7"`` to 7 for an integer).
    """
    if parse_response is None:
        if template is not None:
            raise ValueError("a response template needs transformers >= 5.13 (transformers.utils.chat_parsing)")
        return hermes_tool_calls(text)
    message = parse_response(text, HERMES if template is None else template, prefix="", tools=tools)
    calls = message.get("tool_calls") or []
    return [call.get("function", call) if isinstance(call, dict) else call for call in calls]


def hermes_tool_calls(text: str) -> list[Any]:
    """The Hermes-format tool calls in ``text``, without transformers; ValueError when one is not valid JSON."""
    return [json.loads(body) for body in HERMES_CALL.findall(THINKING.sub("", text))]
