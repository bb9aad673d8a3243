"""One token estimate for everything that has text but no tokenizer: the proxy (to order and
account requests), the simulated vLLM server (to charge prefill), and the sample workload (to
build prompts of a given length). Four characters make a token, close to Llama-3's average on
English text; a chat message adds the template's few tokens."""

from __future__ import annotations

import math
from collections.abc import Iterable

CHARS_PER_TOKEN = 4
MESSAGE_OVERHEAD = 4  # role header and end-of-turn tokens of a chat template, per message
CHAT_OVERHEAD = 3  # the assistant header the template appends


def count_text(text: str) -> int:
    return max(1, math.ceil(len(text) / CHARS_PER_TOKEN)) if text else 0


def _content_text(content: object) -> str:
    """A message's content: a string, or OpenAI content parts (only text parts count)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict) and isinstance(p.get("text"), str))
    return ""


def count_messages(messages: Iterable[dict[str, object]]) -> int:
    n = CHAT_OVERHEAD
    for m in messages:
        n += MESSAGE_OVERHEAD + count_text(_content_text(m.get("content")))
    return n


def count_response_input(items: object, instructions: object = None) -> int:
    """A Responses API `input` (a string, or items: messages, function calls and their outputs)
    and its `instructions`, counted as the chat messages the engine's template makes of them."""
    if isinstance(items, str):
        items = [{"content": items}]
    parts: list[dict[str, object]] = [{"content": instructions}] if isinstance(instructions, str) else []
    for item in items if isinstance(items, list) else []:
        if isinstance(item, dict):
            text = next((item[k] for k in ("content", "arguments", "output") if k in item), None)
            parts.append({"content": text})
    return count_messages(parts)


def count_prompt(prompt: object) -> int:
    """A completions prompt: a string, a list of token ids, or a one-element list of either."""
    if isinstance(prompt, str):
        return count_text(prompt)
    if isinstance(prompt, list):
        if prompt and all(isinstance(t, int) for t in prompt):
            return len(prompt)
        if len(prompt) == 1:
            return count_prompt(prompt[0])
    return 0


def make_text(tokens: int, seed: int = 0) -> str:
    """Text that counts as exactly `tokens` tokens (4-character words)."""
    words = ("data", "node", "task", "path", "core", "slot", "rank", "unit", "fair", "plan")
    return "".join(f"{words[(seed + i) % len(words)][:3]} " for i in range(tokens))
