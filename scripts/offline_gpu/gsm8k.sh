#!/usr/bin/env bash
# GSM8K, SFT (2 epochs) against WMSS (SFT 1 epoch, then one WD-DS + WD-JT iteration) at the same budget,
# with SmolLM2-135M-Instruct on one GPU in bf16 (configs/gsm8k-smollm2.yaml with the GPU settings below),
# on a machine without
# network access whose python3 has torch (CUDA), transformers, accelerate and peft. What it lacks comes
# from .offline/, made by scripts/offline_gpu/pack.sh on a machine with the network.
#
#   scripts/offline_gpu/gsm8k.sh check          install the wheels, join the model, print versions and GPU
#   scripts/offline_gpu/gsm8k.sh run 1 2 3      train and evaluate both arms on these seeds (resumable)
#   scripts/offline_gpu/gsm8k.sh compare        the table: accuracy per seed, Δ WMSS − SFT [95% CI]
#
# Runs go to runs/gsm8k-gpu/{sft,wmss}/seed-N (standard checkpoints and run records). With RESULTS_DIR
# set, `run` and `compare` also leave there a tarball of the records without weights, the machine
# description and the table (what comes back from a borrowed machine). Each step is logged with its wall
# time; `run` re-run after an interruption resumes every unfinished run. WMSS_GPU_OVERRIDES adds config
# overrides to every run (a smoke test on a CPU: "train.bf16=false data.limit=32 eval.limit=16").
set -euo pipefail
cd "$(dirname "$0")/../.."
PACK=${WMSS_PACK:-.offline}
SITE=${WMSS_SITE:-/tmp/wmss-site}
ROOT=${WMSS_GPU_RUNS:-runs/gsm8k-gpu}
CONFIG=${WMSS_GPU_CONFIG:-configs/gsm8k-smollm2.yaml}
# The GPU settings on top of it: the same effective batch (64) in one device batch, bf16, the whole test
# set in large generation batches; SFT 1 epoch -> M1 for WMSS (the SFT arm overrides it with 2).
GPU=(train.per_device_batch_size=64 train.gradient_accumulation_steps=1 train.bf16=true sft.epochs=1
     wmss.entropy_batch_size=128 eval.limit=null eval.batch_size=256)
DATA=/tmp/wmss-data/gsm8k
export PYTHONPATH="$PWD/src:$SITE${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
export WMSS_CACHE=${WMSS_CACHE:-/tmp/wmss-cache}

say() { echo "[gsm8k.sh $(date -u +%H:%M:%S)] $*"; }

prepare() {
  if ! python3 -c "import datasets, math_verify, gguf" 2>/dev/null; then
    ls "$PACK"/wheels/*.whl >/dev/null 2>&1 || {
      echo "gsm8k.sh: datasets/math-verify/gguf are missing and $PACK/wheels has no wheels; make the pack" \
        "with scripts/offline_gpu/pack.sh and bring $PACK/wheels along" >&2; exit 1; }
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" \
      "$PACK"/wheels/*.whl
  fi
  mkdir -p /tmp/wmss-model
  GGUF="/tmp/wmss-model/$(cat "$PACK/model/NAME")"
  if [ ! -f "$GGUF" ]; then
    for half in part-00 part-01; do
      [ -f "$PACK/model/$half" ] || {
        echo "gsm8k.sh: $PACK/model/$half is missing; bring both halves of the model (two transfers" \
          "made back to back when one is over the limit)" >&2; exit 1; }
    done
    cat "$PACK/model/part-00" "$PACK/model/part-01" > "$GGUF.partial"
    if [ "$(sha256sum "$GGUF.partial" | cut -d' ' -f1)" != "$(cat "$PACK/model/SHA256")" ]; then
      rm -f "$GGUF.partial"
      echo "gsm8k.sh: the joined model does not match $PACK/model/SHA256; the halves come from" \
        "different packs or a transfer broke: bring them again" >&2; exit 1
    fi
    mv "$GGUF.partial" "$GGUF"
  fi
  mkdir -p "$DATA"
  for split in train test; do
    [ -s "$DATA/$split.jsonl" ] || gunzip -c "$PACK/data/gsm8k/$split.jsonl.gz" > "$DATA/$split.jsonl"
  done
}

machine() {  # what `wmss study` records beside each run, plus the versions
  python3 -c "import json, platform, transformers
from wmss.study.runner import machine
print(json.dumps({'machine': machine(), 'transformers': transformers.__version__,
                  'python': platform.python_version()}))"
}

records() {  # the run records without weights, for RESULTS_DIR
  [ -n "${RESULTS_DIR:-}" ] || return 0
  mkdir -p "$RESULTS_DIR"
  machine > "$RESULTS_DIR/machine.json"
  tar -czf "$RESULTS_DIR/gsm8k-gpu-records.tar.gz" --exclude='*.safetensors' --exclude='*.bin' \
    --exclude='*.pt' --exclude='checkpoints' --exclude='models' "$ROOT" 2>/dev/null || true
}

arm() {  # arm name, seed, overrides...
  local name=$1 seed=$2; shift 2
  local start=$SECONDS
  say "$name seed $seed: started"
  python3 -m wmss run "$CONFIG" seed="$seed" output_dir="$ROOT/$name/seed-$seed" model="$GGUF" \
    data.path="$DATA/train.jsonl" eval.path="$DATA/test.jsonl" "${GPU[@]}" "$@" ${WMSS_GPU_OVERRIDES:-}
  [ -f "$ROOT/$name/seed-$seed/machine.json" ] || machine > "$ROOT/$name/seed-$seed/machine.json"
  say "$name seed $seed: done in $((SECONDS - start)) s"
}

case "${1:-}" in
  check)
    prepare
    python3 -c "import wmss, datasets, math_verify, gguf, peft, accelerate; print('imports: ok')"
    machine
    python3 -c "import torch; assert torch.cuda.is_available(), 'no CUDA device visible'"
    ;;
  run)
    shift
    [ $# -gt 0 ] || { echo "gsm8k.sh run: name the seeds, e.g. 'run 1 2 3'" >&2; exit 2; }
    prepare
    for seed in "$@"; do
      arm sft "$seed" method=sft sft.epochs=2 wmss.iterations=0
      arm wmss "$seed"
      records
    done
    ;;
  compare)
    mkdir -p "${RESULTS_DIR:-$ROOT}"
    python3 scripts/offline_gpu/compare.py "$ROOT" | tee "${RESULTS_DIR:-$ROOT}/comparison.md"
    records
    ;;
  *)
    sed -n 2,15p "$0" >&2
    exit 2
    ;;
esac
