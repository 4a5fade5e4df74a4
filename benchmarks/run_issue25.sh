#!/usr/bin/env bash
# Every issue-25 measurement, one after the other, as RESULTS.md quotes them. Run it from the
# repository root on a quiet machine (nothing else running: the ratios are of wall time):
#
#   bash benchmarks/run_issue25.sh 2>benchmarks-issue25.log | tee benchmarks-issue25.md
#
# Results go to stdout, the trainers' own log lines to stderr. PYTHON runs wmss's benchmarks;
# BENCH_PYTHON, the environment with TRL in it (benchmarks/README.md), runs trl_sft.py.
#
# Time on the 2-core development CPU, quiet: 58 minutes on 2026-12-03 (padding_free.py ~20, trl_sft.py
# ~38); its output of that day is results/benchmarks/issue25-2026-12-03.md. Fewer steps would not tell
# a 10% difference from noise on this machine.
#
# Memory: padding-free batches on a CPU attend over the whole flattened row with a block-diagonal
# mask (sdpa's math kernel), so attention memory grows with the square of the batch's total tokens.
# WD-JT (two models) on GSM8K at batch 16 flattened (~3,500 tokens in one row) needs more than this
# machine's 24 GiB and was killed, so WD-JT on GSM8K is measured at batch 8 (~1,750 tokens a row).
set -euo pipefail

PYTHON=${PYTHON:-.venv/bin/python}
BENCH_PYTHON=${BENCH_PYTHON:-.venv-bench/bin/python}
export PYTHONPATH=src${PYTHONPATH:+:$PYTHONPATH}

if ! "$BENCH_PYTHON" -c "import trl" 2>/dev/null; then
    echo "run_issue25.sh: $BENCH_PYTHON cannot import trl; set BENCH_PYTHON to the Python of an environment" \
        "with benchmarks/requirements.txt installed (see benchmarks/README.md)." >&2
    exit 2
fi

run() {
    echo
    echo "\$ $*"
    "$@"
}

# Padded vs padding-free vs length-grouped steps/s (SFT, WD-JT, entropy pass), batch 16.
run "$PYTHON" benchmarks/padding_free.py --data gsm8k --batch 16 --phases sft,entropy --batches 3 --rounds 1 --warmup 0
run "$PYTHON" benchmarks/padding_free.py --data gsm8k --batch 8 --phases wdjt --batches 3 --rounds 1 --warmup 0
run "$PYTHON" benchmarks/padding_free.py --data mawps --batch 16 --batches 3 --rounds 1 --warmup 0

# wmss against TRL's SFTTrainer, padding-free and padded, with the WD-JT step; batch 8.
# One process per data set and padding mode: a process holds all contenders' models at once.
for data in gsm8k mawps; do
    for mode in padding-free padded; do
        run "$BENCH_PYTHON" benchmarks/trl_sft.py --data $data --modes $mode --batch 8 --steps 3 --warmup 1 --memory-steps 2
    done
done
