"""vLLM 0.33's verdict on /v1/embeddings, /tokenize and /detokenize bodies: its request models
(EmbeddingRequest, TokenizeRequest, DetokenizeRequest, pydantic with their validators) and, for
embeddings, the pooling parameters it builds. Payload: [{"label", "kind": "embed"|"tokenize"|
"detokenize", "body"}]. Answers {label: {"ok": bool, "param"}}, as request_verdicts.py."""

from __future__ import annotations

import warnings

from vllm_cli import answer, read_payload

warnings.simplefilter("ignore")

from pydantic import TypeAdapter, ValidationError  # noqa: E402
from vllm.entrypoints.pooling.embed.protocol import EmbeddingRequest  # noqa: E402
from vllm.entrypoints.serve.tokenize.protocol import DetokenizeRequest, TokenizeRequest  # noqa: E402

ADAPTERS = {"embed": TypeAdapter(EmbeddingRequest), "tokenize": TypeAdapter(TokenizeRequest),
            "detokenize": TypeAdapter(DetokenizeRequest)}


def verdict(kind: str, body: object) -> dict[str, object]:
    try:
        req = ADAPTERS[kind].validate_python(body)
        if kind == "embed":
            req.to_pooling_params()
    except ValidationError as e:
        err = e.errors()[0]
        loc = [str(x) for x in err["loc"] if not str(x).startswith("function-")]
        # A union reports each member's error under its class name first: the field is the next part.
        loc = [x for x in loc if not x[:1].isupper()]
        param = getattr(err.get("ctx", {}).get("error"), "parameter", None) or (loc[0] if loc else None)
        return {"ok": False, "param": param, "why": err["msg"][:200]}
    except Exception as e:  # VLLMValidationError
        return {"ok": False, "param": getattr(e, "parameter", None), "why": f"{type(e).__name__}: {e}"[:200]}
    return {"ok": True, "param": None}


answer({item["label"]: verdict(item["kind"], item["body"]) for item in read_payload()})
