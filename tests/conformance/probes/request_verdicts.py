"""vLLM 0.33's verdict on request bodies: its request model (pydantic, with its validators) and the
sampling-parameter checks it runs before the engine (`to_sampling_params`, SamplingParams). Payload:
[{"label", "endpoint": "chat"|"completions", "body"}]. Answers {label: {"ok": bool, "param"}}:
`param` is what vLLM's 400 names (the field of a pydantic error, or VLLMValidationError.parameter)."""

from __future__ import annotations

import warnings

from vllm_cli import answer, read_payload

warnings.simplefilter("ignore")

from pydantic import ValidationError  # noqa: E402
from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest  # noqa: E402
from vllm.entrypoints.openai.completion.protocol import CompletionRequest  # noqa: E402

MAX_MODEL_LEN = 131072


def verdict(endpoint: str, body: object) -> dict[str, object]:
    cls = ChatCompletionRequest if endpoint == "chat" else CompletionRequest
    try:
        req = cls.model_validate(body)
        cap = getattr(req, "max_completion_tokens", None)
        cap = cap if cap is not None else req.max_tokens if req.max_tokens is not None else 16
        req.to_sampling_params(min(int(cap), MAX_MODEL_LEN), {})  # get_max_tokens: min(asked, room)
    except ValidationError as e:
        err = e.errors()[0]
        loc = [str(x) for x in err["loc"] if not str(x).startswith("function-")]
        param = getattr(err.get("ctx", {}).get("error"), "parameter", None) or (loc[0] if loc else None)
        return {"ok": False, "param": param, "why": err["msg"][:200]}
    except Exception as e:  # VLLMValidationError, ValueError from SamplingParams
        return {"ok": False, "param": getattr(e, "parameter", None), "why": f"{type(e).__name__}: {e}"[:200]}
    return {"ok": True, "param": None}


answer({item["label"]: verdict(item["endpoint"], item["body"]) for item in read_payload()})
