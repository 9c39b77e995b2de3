# Shared by scripts/gpu_check.sh and scripts/gpu_compare.sh (sourced, not run): the machine they
# run on has a Python with torch (2.11, CUDA) but no Rust, so they run release binaries built
# elsewhere and carried in the tree, against that Python's libtorch.
#   BIN        folder of the release binaries bst-perf and bst-sweep (default target/release;
#              build them with `cargo build --release -p bst-sweep --bins`)
#   PYTHON     the Python with torch (default .venv/bin/python, else python3)
#   REHEARSAL  1: a tiny run on the CPU, to check the script without a GPU
#   RESULTS    the results folder (default results/gpu/<what>-<UTC time>)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
BIN=${BIN:-target/release}
if [ -z "${PYTHON:-}" ]; then
  if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
REHEARSAL=${REHEARSAL:-0}
for exe in bst-perf bst-sweep; do
  [ -x "$BIN/$exe" ] || { echo "[gpu] $BIN/$exe missing: cargo build --release -p bst-sweep --bins (or set BIN)" >&2; exit 1; }
done
torch_dir=$("$PYTHON" -c 'import torch,os;print(os.path.dirname(torch.__file__))')
export LD_LIBRARY_PATH="$torch_dir/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
if [ "$REHEARSAL" = 1 ]; then DEVICE=cpu; else DEVICE=cuda; fi

# results_dir WHAT: creates the results folder and records the machine, the card and the commit.
results_dir() {
  RESULTS=${RESULTS:-results/gpu/$1-$(date -u +%Y%m%dT%H%M%SZ)}
  mkdir -p "$RESULTS"
  {
    echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo "commit: $(git rev-parse HEAD 2>/dev/null || echo unknown)$(git diff --quiet HEAD 2>/dev/null || echo ' (uncommitted changes)')"
    echo "device: $DEVICE$([ "$REHEARSAL" = 1 ] && echo ' (CPU rehearsal, tiny sizes)')"
    echo "torch: $("$PYTHON" -c 'import torch;print(torch.__version__, "cuda", torch.version.cuda)')"
    echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | xargs), $(nproc) cores"
    if command -v nvidia-smi >/dev/null 2>&1; then
      echo "card:"; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | sed 's/^/  /'
    fi
  } > "$RESULTS/machine.txt"
  cat "$RESULTS/machine.txt"
}

# step NAME COMMAND...: runs a command with its output in $RESULTS/NAME.log and its time in
# $RESULTS/steps.tsv; a failed step is recorded and the script goes on.
step() {
  local name=$1; shift
  local start=$SECONDS status=0
  echo "[gpu] $name: $*"
  echo "$*" > "$RESULTS/$name.cmd"
  "$@" > "$RESULTS/$name.log" 2>&1 || status=$?
  printf "%s\t%s\t%ss\n" "$name" "$([ $status = 0 ] && echo ok || echo "failed ($status)")" $((SECONDS - start)) | tee -a "$RESULTS/steps.tsv"
  [ $status = 0 ] || tail -20 "$RESULTS/$name.log" >&2
  return 0
}
