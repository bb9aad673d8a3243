"""A simulated vLLM server driven in real time by chirond's engine model (`chirond fake-vllm`).
See `chirond.fakevllm.server` for the in-process API and docs/fake-vllm.md for the tool."""

from chirond.fakevllm.server import FakeVllm

__all__ = ["FakeVllm"]
