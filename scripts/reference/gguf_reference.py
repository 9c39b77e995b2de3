"""Independent Python readings of a GGUF file, for the bst-msrnn tests (run with .venv/bin/python).

  gguf_reference.py digests MODEL      one line per tensor: name, row-major shape, sha256 of the
                                       little-endian f32 values the `gguf` package dequantises
  gguf_reference.py tokenize MODEL     reads texts (JSON list of strings) on stdin, prints their token
                                       ids (JSON) from a pure-Python GPT-2 byte-level BPE over the
                                       file's vocabulary and merges (smollm pre-tokenizer: single
                                       digits first, then the GPT-2 regex), independent of `tokenizers`
"""
import hashlib
import json
import sys

import numpy as np
from gguf import GGUFReader
from gguf.quants import dequantize


def dequantised(reader):
    for t in reader.tensors:
        shape = tuple(int(d) for d in reversed(t.shape))  # GGUF lists the fastest dimension first
        values = dequantize(t.data, t.tensor_type).astype("<f4", copy=False).reshape(shape)
        yield t.name, shape, values


def digests(path):
    for name, shape, values in dequantised(GGUFReader(path)):
        digest = hashlib.sha256(np.ascontiguousarray(values).tobytes()).hexdigest()
        print(name, "x".join(map(str, shape)), digest)


def bytes_to_unicode():
    """GPT-2's map from bytes to printable characters (openai/gpt-2 encoder.py)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def field_strings(reader, key):
    f = reader.fields[key]
    return [bytes(f.parts[i]).decode("utf-8") for i in f.data]


def bpe(word, ranks):
    parts = list(word)
    while len(parts) > 1:
        pairs = [(ranks.get((a, b), float("inf")), i) for i, (a, b) in enumerate(zip(parts, parts[1:]))]
        rank, i = min(pairs)
        if rank == float("inf"):
            break
        parts[i:i + 2] = [parts[i] + parts[i + 1]]
    return parts


def tokenize(path):
    import regex

    reader = GGUFReader(path)
    pre = bytes(reader.fields["tokenizer.ggml.pre"].parts[-1]).decode()
    assert pre in ("smollm", "starcoder"), f"pre-tokenizer {pre} not reproduced here"
    vocab = {t: i for i, t in enumerate(field_strings(reader, "tokenizer.ggml.tokens"))}
    ranks = {tuple(m.split(" ", 1)): r for r, m in enumerate(field_strings(reader, "tokenizer.ggml.merges"))}
    byte_map = bytes_to_unicode()
    gpt2 = regex.compile(r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+""")
    out = []
    for text in json.load(sys.stdin):
        ids = []
        for piece in regex.findall(r"\p{N}|[^\p{N}]+", text):
            for word in gpt2.findall(piece):
                mapped = "".join(byte_map[b] for b in word.encode("utf-8"))
                ids.extend(vocab[p] for p in bpe(mapped, ranks))
        out.append(ids)
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    {"digests": digests, "tokenize": tokenize}[sys.argv[1]](sys.argv[2])
