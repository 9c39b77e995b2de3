#!/usr/bin/env bash
# One-time (and safe to rerun) setup of a bst checkout on a Debian machine:
#   1. checks the Rust toolchain and the system libraries the plots need (fontconfig, a TTF font);
#   2. creates .venv and installs torch==2.11.0 from PyPI (the libtorch that tch 0.24 pairs with),
#      skipped when that version is already there;
#   3. points .libtorch at the wheel's torch/ folder (read by .cargo/config.toml and build.rs, so
#      cargo build/run/test need no environment variables);
#   4. installs the Python safetensors package (tests read our checkpoints from Python), and gguf
#      and regex (bst-msrnn's tests compare its GGUF dequantisation and tokenizer with them);
#   5. fetches the corpora, long-range-task data and the SmolLM2 GGUF model into data/
#      (scripts/fetch_data.sh).
# Each step says what it did.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
TORCH_VERSION=2.11.0
say() { echo "[setup] $*"; }

command -v cargo >/dev/null 2>&1 || {
  echo "[setup] cargo not found: install the Rust toolchain (https://rustup.rs or Debian's cargo) first" >&2
  exit 1
}
say "rust: $(cargo --version)"

# Plots are rendered with plotters' TrueType backend: it needs fontconfig and at least one font.
missing=()
[ -e /usr/include/fontconfig/fontconfig.h ] || missing+=(libfontconfig-dev)
command -v fc-list >/dev/null 2>&1 && [ -n "$(fc-list 2>/dev/null | head -n1)" ] || missing+=(fontconfig fonts-dejavu-core)
python3 -m venv --help >/dev/null 2>&1 || missing+=(python3-venv)
command -v pkg-config >/dev/null 2>&1 || missing+=(pkg-config)
if [ ${#missing[@]} -gt 0 ]; then
  say "installing Debian packages: ${missing[*]}"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO=sudo
  $SUDO apt-get update -q=2
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q=2 "${missing[@]}"
else
  say "system packages: fontconfig, fonts, python3-venv, pkg-config present"
fi

torch_version() {
  .venv/bin/python - 2>/dev/null <<'PY'
import importlib.metadata as m
print(m.version("torch").split("+")[0])
PY
}
if [ -x .venv/bin/python ] && [ "$(torch_version)" = "$TORCH_VERSION" ]; then
  say "torch $TORCH_VERSION already in .venv"
else
  say "installing torch==$TORCH_VERSION into .venv (about 4.6 GB)"
  free_gb=$(df -Pk . | awk 'NR == 2 { print int($4 / 1048576) }')
  [ "$free_gb" -ge 8 ] || say "warning: only ${free_gb} GB free here; torch (4.6 GB), the data and a build need about 12 GB"
  python3 -m venv .venv
  # No pip cache: a cached copy of the wheels would double the install's disk use.
  .venv/bin/pip install -q --no-cache-dir --disable-pip-version-check "torch==$TORCH_VERSION"
  [ "$(torch_version)" = "$TORCH_VERSION" ] || { echo "[setup] torch install failed" >&2; exit 1; }
fi

if .venv/bin/python -c "import safetensors" 2>/dev/null; then
  say "safetensors (Python) already in .venv"
else
  .venv/bin/pip install -q --no-cache-dir --disable-pip-version-check safetensors
  say "installed safetensors into .venv (tests load our checkpoints from Python)"
fi

GGUF_VERSION=0.19.0
if .venv/bin/python -c "import gguf, regex, importlib.metadata as m; assert m.version('gguf') == '$GGUF_VERSION'" 2>/dev/null; then
  say "gguf $GGUF_VERSION and regex (Python) already in .venv"
else
  .venv/bin/pip install -q --no-cache-dir --disable-pip-version-check "gguf==$GGUF_VERSION" regex
  say "installed gguf==$GGUF_VERSION and regex into .venv (bst-msrnn checks its GGUF reader and tokenizer against them)"
fi

torch_dir=$(.venv/bin/python - <<'PY'
import importlib.util, os
print(os.path.dirname(importlib.util.find_spec("torch").origin))
PY
)
ln -sfn "$(realpath --relative-to=. "$torch_dir")" .libtorch
say "libtorch: .libtorch -> $(readlink .libtorch) ($(ls .libtorch/lib/libtorch_cuda.so >/dev/null 2>&1 && echo 'with CUDA libraries' || echo 'CPU only'))"

PIP="$PWD/.venv/bin/pip" bash scripts/fetch_data.sh data
say "done: cargo build / run / test need no environment variables now"
