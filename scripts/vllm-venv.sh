#!/usr/bin/env bash
# Installs the pinned vLLM into its own cached virtual environment, outside the clone, for the
# conformance tier (tests/conformance/): vLLM's own parser, request/response models and metric
# loggers judge chirond. Idempotent: a venv whose vLLM already has the pinned version is kept.
# Prints the venv's python on stdout's last line.
#
# The vLLM version(s) chirond supports live here and nowhere else (tests read this file).
set -euo pipefail
VLLM_VERSION=0.33.0
VENV="${CHIROND_VLLM_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/chirond/vllm-$VLLM_VERSION}"
PY="$VENV/bin/python"
if [ "${1:-}" = --version ]; then echo "$VLLM_VERSION"; exit 0; fi
if [ "${1:-}" = --path ]; then echo "$PY"; exit 0; fi
if [ -x "$PY" ] && [ "$("$PY" -c 'import importlib.metadata as m; print(m.version("vllm"))' 2>/dev/null)" = "$VLLM_VERSION" ]; then
  echo "$PY"
  exit 0
fi
mkdir -p "$(dirname "$VENV")"
python3 -m venv "$VENV"
"$VENV/bin/pip" install -q --upgrade pip >&2
# torch comes from the machine's own pip configuration (the CPU wheel where that is what it offers);
# vLLM's CUDA kernels are never loaded: the tier uses its Python code only.
"$VENV/bin/pip" install -q "vllm==$VLLM_VERSION" >&2
echo "$PY"
