"""fake-vllm's /tokenize and /detokenize: vLLM 0.33's request checks and answer shapes
(TokenizeResponse, DetokenizeResponse) over the simulated tokenizer. Pure.

The simulated tokenizer is chirond's token estimate (chirond.tokens): a token is 4 characters of
text, so /tokenize counts what the server bills; a token's id is a fixed function of its text.
It cannot be inverted: /detokenize gives 4-character filler words, one per id."""

from __future__ import annotations

import zlib

from chirond.fakevllm.protocol import ApiError
from chirond.fakevllm.synthetic import tokens_of
from chirond.tokens import CHAT_OVERHEAD, MESSAGE_OVERHEAD, _content_text

VOCAB_SIZE = 128256  # Llama 3's
_WORDS = ("data", "node", "task", "path", "core", "slot", "rank", "unit", "fair", "plan")
_TEMPLATE = "<|t|>"  # what a chat template's own tokens show as


def _bad(message: str, param: str | None = None) -> ApiError:
    return ApiError(400, message, param)


def _ids(pieces: list[str]) -> list[int]:
    return [zlib.crc32(p.encode()) % VOCAB_SIZE for p in pieces]


def _chat_pieces(messages: list[dict[str, object]], add_generation_prompt: bool) -> list[str]:
    """The tokens of a conversation as chirond.tokens.count_messages counts them."""
    out: list[str] = []
    for m in messages:
        out += [_TEMPLATE] * MESSAGE_OVERHEAD + tokens_of(_content_text(m.get("content")))
    return out + [_TEMPLATE] * (CHAT_OVERHEAD if add_generation_prompt else 0)


def tokenize(body: object, *, served_model: str, max_model_len: int) -> dict[str, object]:
    """vLLM's TokenizeResponse for a TokenizeCompletionRequest (`prompt`) or TokenizeChatRequest
    (`messages`)."""
    if not isinstance(body, dict):
        raise _bad("Input should be a valid dictionary or object to extract fields from")
    _check_model(body, served_model)
    strs = body.get("return_token_strs", False)
    if strs is not None and not isinstance(strs, bool):
        raise _bad(f"return_token_strs: Input should be a valid boolean, got {strs!r}", "return_token_strs")
    if "messages" in body:
        messages = body["messages"]
        if not isinstance(messages, list) or not all(isinstance(m, dict) and isinstance(m.get("role"), str)
                                                     for m in messages):
            raise _bad("messages: every message must be an object with a string 'role'", "messages")
        if body.get("continue_final_message") and body.get("add_generation_prompt", True):
            raise _bad("Cannot set both `continue_final_message` and `add_generation_prompt` to True.")
        pieces = _chat_pieces(messages, bool(body.get("add_generation_prompt", True)))
    elif "prompt" in body:
        prompt = body["prompt"]
        if not isinstance(prompt, str):
            raise _bad(f"prompt: Input should be a valid string, got {prompt!r}", "prompt")
        pieces = tokens_of(prompt)
    else:
        raise _bad("prompt: Field required", "prompt")
    return {"count": len(pieces), "max_model_len": max_model_len, "tokens": _ids(pieces),
            "token_strs": pieces if strs else None}


def detokenize(body: object, *, served_model: str) -> dict[str, object]:
    """vLLM's DetokenizeResponse: a filler word per id (ids below the vocabulary size)."""
    if not isinstance(body, dict):
        raise _bad("Input should be a valid dictionary or object to extract fields from")
    _check_model(body, served_model)
    tokens = body.get("tokens")
    if not isinstance(tokens, list) or not all(isinstance(t, int) and not isinstance(t, bool) and t >= 0
                                               for t in tokens):
        raise _bad("tokens: Input should be a list of integers >= 0", "tokens")
    if any(t >= VOCAB_SIZE for t in tokens):
        raise _bad(f"Token id {max(tokens)} is out of vocabulary", "tokens")
    return {"prompt": "".join(_WORDS[t % len(_WORDS)] for t in tokens)}


def _check_model(body: dict[str, object], served_model: str) -> None:
    model = body.get("model")
    if model is not None and model != served_model:
        raise ApiError(404, f"The model `{model}` does not exist.", "model")
