"""fake-vllm's answers against vLLM's own response models. Payload: [{"label", "kind", "body"}],
kind one of the keys of MODELS. Answers {label: [problems]}: a validation error, or a key that
the model does not declare (vLLM's models allow extra keys; a key vLLM never sends is a difference)."""

from __future__ import annotations

import warnings

from vllm_cli import answer, extras, read_payload

warnings.simplefilter("ignore")

from pydantic import BaseModel, ValidationError  # noqa: E402
from vllm.entrypoints.openai.chat_completion.protocol import (  # noqa: E402
    ChatCompletionResponse,
    ChatCompletionStreamResponse,
)
from vllm.entrypoints.openai.completion.protocol import CompletionResponse, CompletionStreamResponse  # noqa: E402
from vllm.entrypoints.pooling.embed.protocol import EmbeddingResponse  # noqa: E402
from vllm.entrypoints.serve.engine.protocol import ErrorResponse, ModelCard, ModelList  # noqa: E402
from vllm.entrypoints.serve.tokenize.protocol import DetokenizeResponse, TokenizeResponse  # noqa: E402

MODELS: dict[str, type[BaseModel]] = {
    "chat": ChatCompletionResponse, "chat_chunk": ChatCompletionStreamResponse,
    "completion": CompletionResponse, "completion_chunk": CompletionStreamResponse,
    "error": ErrorResponse, "model_list": ModelList, "model_card": ModelCard,
    "embedding": EmbeddingResponse, "tokenize": TokenizeResponse, "detokenize": DetokenizeResponse,
}


result = {}
for item in read_payload():
    try:
        obj = MODELS[item["kind"]].model_validate(item["body"])
        result[item["label"]] = extras(obj, item["kind"])
    except ValidationError as e:
        result[item["label"]] = [f"{'.'.join(map(str, err['loc']))}: {err['msg']}" for err in e.errors()]
answer(result)
