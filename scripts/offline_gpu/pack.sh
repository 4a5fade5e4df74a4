#!/usr/bin/env bash
# Packs what a GPU machine without network access lacks for scripts/offline_gpu/gsm8k.sh, into
# .offline/ (git-ignored), run on a machine that has the network and this repo's .venv (`make setup`):
#   wheels/   wmss's dependencies that a stock PyTorch image does not have (Python 3.12, x86_64)
#   data/     GSM8K train and test, gzipped
#   model/    SmolLM2-135M-Instruct's GGUF file in two halves, with its SHA-256, so that each half
#             fits a transfer limit of 64 MiB; gsm8k.sh joins them and checks the sum
# Override the Python version of the target with PACK_PYTHON=3.11, the data folder with WMSS_DATA_DIR.
set -euo pipefail
cd "$(dirname "$0")/../.."
PACK=${WMSS_PACK:-.offline}
DATA=${WMSS_DATA_DIR:-../shared/data}
PYVER=${PACK_PYTHON:-3.12}
PY=${VENV:-.venv}/bin/python

# Exactly the versions this repo's tests ran with here, so that the GPU machine runs the same code.
wheels=()
for name in datasets dill multiprocess math-verify latex2sympy2_extended antlr4-python3-runtime gguf; do
  version=$("$PY" -c "import importlib.metadata as m, sys; print(m.version(sys.argv[1]))" "$name") || {
    echo "pack: $name is not installed in ${VENV:-.venv}; run 'make setup' first" >&2; exit 1; }
  wheels+=("$name==$version")
done
rm -rf "$PACK" && mkdir -p "$PACK/wheels" "$PACK/data/gsm8k" "$PACK/model"
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version "$PYVER" --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  -d "$PACK/wheels" "${wheels[@]}"

for split in train test; do
  src="$DATA/gsm8k/$split.jsonl"
  [ -f "$src" ] || { echo "pack: $src not found; set WMSS_DATA_DIR to the folder holding gsm8k/" >&2; exit 1; }
  gzip -c "$src" > "$PACK/data/gsm8k/$split.jsonl.gz"
done

gguf=$("$PY" -c "from wmss.models import _smollm2_gguf; print(_smollm2_gguf().resolve())")
(cd "$PACK/model" && split -n 2 -d "$gguf" part-)
sha256sum "$gguf" | cut -d' ' -f1 > "$PACK/model/SHA256"
echo "$(basename "$gguf")" > "$PACK/model/NAME"
du -sh "$PACK"/wheels "$PACK"/data "$PACK"/model/part-*
