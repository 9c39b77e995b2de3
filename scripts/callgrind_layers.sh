#!/usr/bin/env bash
# Instruction counts (valgrind callgrind) of one call of each layer, forward and
# forward+backward, one thread, CPU profile sizes: repeatable on a loaded machine, where wall
# time is not. Used to judge whether a change made a layer cheaper (the benchmark command,
# bst-perf, is the record of time). One valgrind process for all layers (loading libtorch under
# valgrind takes minutes); each measured call runs in its own function (examples/layer_call.rs).
#   scripts/callgrind_layers.sh [L] [layers...]      e.g. scripts/callgrind_layers.sh 2048 SLIDE BST:SH:S4D
#   BATCH=16 scripts/callgrind_layers.sh 256 SLIDE
#   KEEP=/tmp/cg scripts/callgrind_layers.sh ...   keeps the raw profile (callgrind_annotate it)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
seq=${1:-2048}
shift || true
layers=("$@")
[ ${#layers[@]} -gt 0 ] || layers=(SLIDE BST:SH:S4D BST:MH:S4D BST:MF:S4D BRECT:FIXED:SKIP SSM)
cargo build -q --release -p bst-model --example layer_call
out=$(mktemp -d)
OMP_NUM_THREADS=1 valgrind --tool=callgrind --callgrind-out-file="$out/cg.out" --toggle-collect='*layer_call*measured_*' \
  target/release/examples/layer_call "$seq" "${layers[@]}" > "$out/order" 2>/dev/null
callgrind_annotate --inclusive=yes --threshold=100 "$out/cg.out" 2>/dev/null | grep -E 'layer_call::measured_[0-9]+' > "$out/costs" || true
printf "%-18s %6s %-17s %15s\n" layer L direction instructions
while read -r slot layer l direction _; do
  ir=$(grep -E "layer_call::measured_${slot#measured_}( |\$|\[)" "$out/costs" | head -1 | awk '{print $1}' || true)
  printf "%-18s %6s %-17s %15s\n" "$layer" "$l" "$direction" "$ir"
done < "$out/order"
if [ -n "${KEEP:-}" ]; then mkdir -p "$KEEP" && cp "$out/cg.out" "$KEEP/callgrind.out"; fi
rm -rf "$out"
