#!/usr/bin/env bash
# The GPU comparison (issue 16), under 6 minutes on one GPU, from release binaries (see
# scripts/gpu_common.sh for BIN, PYTHON, RESULTS): BST:SH:S4D, SLIDE and BRECT:FIXED:SKIP at about
# 20M parameters, L 4096, bf16, each trained for the same 80 s of training on the books corpus
# (data/books, carried: 22 MB), then test bits per byte (experiments/gpu_compare.toml).
# Writes results/gpu/compare-<time>/: machine.txt, steps.tsv, the sweep's log and
# gpu_compare/ (runs.csv, report.md, plots; gpu_compare-rehearsal/ in a rehearsal).
#   scripts/gpu_compare.sh               # on the GPU machine
#   REHEARSAL=1 scripts/gpu_compare.sh   # tiny models for a few seconds each on the CPU
source "$(dirname "${BASH_SOURCE[0]}")/gpu_common.sh"
results_dir compare
profile=()
[ "$REHEARSAL" = 1 ] && profile=(--profile rehearsal)
step compare "$BIN/bst-sweep" experiments/gpu_compare.toml "${profile[@]}" --device "$DEVICE" --results "$RESULTS" --quiet
grep -h -A5 '(test bits per byte)' "$RESULTS/compare.log" || true
echo "[gpu] wrote $RESULTS"
