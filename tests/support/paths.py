"""Where things are in the repository."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "tests" / "data"
PROFILES = ROOT / "profiles"
PROFILE_8B = PROFILES / "llama-3.1-8b_a100-80gb_tp1.toml"
METRICS_PATH = DATA / "vllm_metrics" / "vllm-0.10.2.txt"  # a real vLLM 0.10.2 /metrics page
