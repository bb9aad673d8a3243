"""vLLM 0.33's verdict on request bodies: its request model (pydantic, with its validators) and the
sampling-parameter checks it runs before the engine (`to_sampling_params`, SamplingParams); for
/v1/responses also its serving class's checks with the response store off (the default). Payload:
[{"label", "endpoint": "chat"|"completions"|"responses", "body"}]. Answers {label: {"ok": bool,
"param", "status"}}: `param` is what vLLM's 400 names (the field of a pydantic error, or
VLLMValidationError.parameter); `status` the HTTP status of a refusal."""

from __future__ import annotations

import warnings

from vllm_cli import answer, read_payload

warnings.simplefilter("ignore")

from pydantic import ValidationError  # noqa: E402
from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest  # noqa: E402
from vllm.entrypoints.openai.completion.protocol import CompletionRequest  # noqa: E402
from vllm.entrypoints.openai.responses.protocol import ResponsesRequest  # noqa: E402

MAX_MODEL_LEN = 131072


def responses_serving_checks(req: ResponsesRequest) -> dict[str, object] | None:
    """OpenAIServingResponses' checks before rendering, with VLLM_ENABLE_RESPONSES_API_STORE unset."""
    if req.store and req.background:
        return {"ok": False, "param": "background", "status": 400, "why": "background needs the store"}
    if req.previous_input_messages and req.previous_response_id:
        return {"ok": False, "param": "previous_response_id", "status": 400, "why": "both given"}
    if req.previous_response_id:  # nothing is stored: the lookup fails
        return {"ok": False, "param": "response_id", "status": 404, "why": "Response not found"}
    return None


def verdict(endpoint: str, body: object) -> dict[str, object]:
    cls = {"chat": ChatCompletionRequest, "completions": CompletionRequest, "responses": ResponsesRequest}[endpoint]
    try:
        req = cls.model_validate(body)
        if isinstance(req, ResponsesRequest):
            refused = responses_serving_checks(req)
            if refused is not None:
                return refused
            req.to_sampling_params(MAX_MODEL_LEN, {})
            return {"ok": True, "param": None}
        cap = getattr(req, "max_completion_tokens", None)
        cap = cap if cap is not None else req.max_tokens if req.max_tokens is not None else 16
        req.to_sampling_params(min(int(cap), MAX_MODEL_LEN), {})  # get_max_tokens: min(asked, room)
    except ValidationError as e:
        err = e.errors()[0]
        loc = [str(x) for x in err["loc"] if not str(x).startswith("function-")]
        param = getattr(err.get("ctx", {}).get("error"), "parameter", None) or (loc[0] if loc else None)
        return {"ok": False, "param": param, "status": 400, "why": err["msg"][:200]}
    except Exception as e:  # VLLMValidationError, ValueError from SamplingParams
        return {"ok": False, "param": getattr(e, "parameter", None), "status": 400,
                "why": f"{type(e).__name__}: {e}"[:200]}
    return {"ok": True, "param": None}


answer({item["label"]: verdict(item["endpoint"], item["body"]) for item in read_payload()})
