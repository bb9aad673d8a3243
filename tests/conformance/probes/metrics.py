"""vLLM's own Prometheus exposition for chirond's engine command: the engine config built from the
command (as engine_commands.py does), then v1's PrometheusStatLogger registered for engine 0 (and
the cache config's info, as the engine reports it once its KV cache is sized), rendered by
prometheus_client. Payload: {"argv", "models", "num_gpu_blocks"}. Answers the text."""

from __future__ import annotations

import warnings

from vllm_cli import answer, read_payload, serve_args

warnings.simplefilter("ignore")
payload = read_payload()

from prometheus_client import REGISTRY, generate_latest  # noqa: E402
from vllm.engine.arg_utils import AsyncEngineArgs  # noqa: E402
from vllm.v1.metrics.loggers import PrometheusStatLogger  # noqa: E402

argv = [payload["models"].get(a, a) for a in payload["argv"]]
cfg = AsyncEngineArgs.from_cli_args(serve_args(argv)).create_engine_config()
# What the engine core reports once it has sized its KV cache (v1/engine/core_client.py, ready
# handshake; v1/core/kv_cache_utils.py get_kv_cache_capacity for a full-attention model).
cc, blocks = cfg.cache_config, payload["num_gpu_blocks"]
cc.num_gpu_blocks = blocks
concurrency = blocks / -(-cfg.model_config.max_model_len // cc.block_size)
cc.kv_cache_max_concurrency = concurrency
cc.kv_cache_size_tokens = int(concurrency * cfg.model_config.max_model_len)
cc.effective_attention_block_size = cc.block_size
logger = PrometheusStatLogger(cfg, engine_indexes=[0])
logger.log_engine_initialized()
answer({"text": generate_latest(REGISTRY).decode()})
