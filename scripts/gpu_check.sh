#!/usr/bin/env bash
# The GPU check (issue 16), under 6 minutes on one GPU, from release binaries (see
# scripts/gpu_common.sh for BIN, PYTHON, RESULTS):
#   1. parity on the GPU: our layers and the CPU-profile model against the PyTorch reference,
#      outputs and gradients within 1e-4 in f32 (bst-perf --tiny), and at the study's size;
#   2. the layer speed study on CUDA in f32 and in bf16 up to L = 64k at the paper's left-panel
#      setting (W 128, S 16, 16 heads, d 512), ours against PyTorch eager, with the GEMM peak and
#      the training step of the 4-layer model at d 512;
#   3. one short bf16 training run (BST:SH:S4D of experiments/gpu_compare.toml, 30 s of training).
# Writes results/gpu/check-<time>/: machine.txt (card, torch, commit), steps.tsv, each step's log
# and bst-perf's CSVs and summaries.
#   scripts/gpu_check.sh                 # on the GPU machine
#   REHEARSAL=1 scripts/gpu_check.sh     # the same steps at a tiny size on the CPU
source "$(dirname "${BASH_SOURCE[0]}")/gpu_common.sh"
results_dir check
perf=("$BIN/bst-perf" --device "$DEVICE" --python "$PYTHON" --no-compile)
if [ "$REHEARSAL" = 1 ]; then
  layer=(--d-model 32 --heads 2 --window 8 --states 4 --lengths 64,256 --repeats 2 --train-batch 2 --train-seq 32 --train-steps 1 --memory-lengths 64 --gemm 256)
  train=(--profile rehearsal train.time_limit_s=3)
else
  layer=(--d-model 512 --heads 16 --window 128 --states 16 --lengths 1024,4096,16384,65536 --repeats 5 --cap-s 20)
  train=(train.time_limit_s=30 train.eval_tokens=65536)
fi
step parity_tiny "${perf[@]}" --tiny --out "$RESULTS/parity_tiny"
step speed_f32 "${perf[@]}" "${layer[@]}" --precision f32 --out "$RESULTS/speed_f32"
step speed_bf16 "${perf[@]}" "${layer[@]}" --precision bf16 --out "$RESULTS/speed_bf16"
step train_bf16 "$BIN/bst-sweep" experiments/gpu_compare.toml "${train[@]}" --only BST:SH:S4D --device "$DEVICE" --results "$RESULTS" --quiet
echo "[gpu] wrote $RESULTS"
