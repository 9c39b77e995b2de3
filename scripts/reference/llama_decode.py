"""An eager PyTorch token loop over a llama GGUF with a bounded KV cache: the reference that the
bst-msrnn engine is tested against (parity) and timed against (speed). Written independently of
the Rust code, in the plain Hugging Face style: separate Q/K/V and gate/up projections, keys
repeated over query groups, the cache grown with torch.cat and shrunk with a boolean mask.

  llama_decode.py --model M --tokens T.json --policy tova[,h2o,...] --k 64 [--threads N] [--out O.json]

T.json is a list of equal-length token-id lists (a batch). For each policy (the model is loaded
once) prints one JSON line {"policy", "k", "batch", "seq", "threads", "seconds", "tokens_per_s",
"max_cache_len"}; --out gets {policy: log-probabilities of every next token, batch x (seq-1)}.
Policies as in crates/bst-msrnn/src/kv_cache.rs: full, window, window+I, h2o, tova, tova-headwise,
tova-keepnew.
"""
import argparse
import json
import math
import sys
import time

import torch
from gguf import GGUFReader
from gguf.quants import dequantize


def load(path):
    r = GGUFReader(path)
    meta = lambda k: r.fields[k].contents()
    cfg = dict(
        n_layers=int(meta("llama.block_count")), d=int(meta("llama.embedding_length")),
        n_heads=int(meta("llama.attention.head_count")), n_kv=int(meta("llama.attention.head_count_kv")),
        base=float(meta("llama.rope.freq_base")), eps=float(meta("llama.attention.layer_norm_rms_epsilon")),
        ctx=int(meta("llama.context_length")),
    )
    w = {}
    for t in r.tensors:
        shape = tuple(int(x) for x in reversed(t.shape))
        w[t.name] = torch.from_numpy(dequantize(t.data, t.tensor_type).reshape(shape).astype("float32").copy())
    hd = cfg["d"] // cfg["n_heads"]
    for i in range(cfg["n_layers"]):
        # llama.cpp stores Q/K rows permuted for adjacent-pair RoPE; put them back in HF order.
        for name, heads in (("attn_q", cfg["n_heads"]), ("attn_k", cfg["n_kv"])):
            x = w[f"blk.{i}.{name}.weight"]
            w[f"blk.{i}.{name}.weight"] = x.view(heads, hd // 2, 2, -1).transpose(1, 2).reshape(x.shape)
    return cfg, w


def rms_norm(x, weight, eps):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight


def rotate_half(x):
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


class Cache:
    """One layer's cache, entries in insertion order."""

    def __init__(self, policy, k):
        self.policy, self.k = policy, k
        self.keys = self.values = self.pos = self.score = None

    def append(self, key, value, position):  # key, value: [b, kv, 1, hd]
        b, h = key.shape[:2]
        pos = torch.full((b, h, 1), position, dtype=torch.long)
        if self.keys is None:
            self.keys, self.values, self.pos = key, value, pos
            self.score = torch.zeros(b, h, 1)
        else:
            self.keys = torch.cat([self.keys, key], 2)
            self.values = torch.cat([self.values, value], 2)
            self.pos = torch.cat([self.pos, pos], 2)
            self.score = torch.cat([self.score, torch.zeros(b, h, 1)], 2)
        self.newest = position

    def observe(self, w):  # w: [b, q_heads, n] weights of the current query
        b, h, n = self.pos.shape
        grouped = w.view(b, h, -1, n)
        self.score = self.score + grouped.sum(2)
        if self.policy == "full" or n <= self.k:
            return
        victim = self.victim(grouped)  # [b, h]
        keep = torch.ones(b, h, n, dtype=torch.bool)
        keep.scatter_(2, victim.unsqueeze(-1), False)
        self.keys = self.keys[keep.unsqueeze(-1).expand_as(self.keys)].view(b, h, n - 1, -1)
        self.values = self.values[keep.unsqueeze(-1).expand_as(self.values)].view(b, h, n - 1, -1)
        self.pos = self.pos[keep].view(b, h, n - 1)
        self.score = self.score[keep].view(b, h, n - 1)

    def victim(self, grouped):
        p, pos = self.policy, self.pos.float()
        if p == "window":
            return pos.argmin(-1)
        if p.startswith("window+"):
            sinks = int(p.split("+")[1] or 4)
            return pos.masked_fill(pos < sinks, math.inf).argmin(-1)
        if p == "h2o":
            recent = self.pos > self.newest - self.k // 2
            return self.score.masked_fill(recent, math.inf).argmin(-1)
        if p.startswith("tova"):
            b, h = self.pos.shape[:2]
            s = grouped.mean(2) if "headwise" in p else grouped.mean((1, 2)).unsqueeze(1).expand(b, h, -1)
            if "keepnew" in p:
                s = s.masked_fill(self.pos == self.newest, math.inf)
            return s.argmin(-1)
        raise SystemExit(f"unknown policy {p}")


class Llama:
    def __init__(self, cfg, w):
        self.cfg, self.w = cfg, w
        hd = cfg["d"] // cfg["n_heads"]
        inv = 1.0 / cfg["base"] ** (torch.arange(0, hd, 2, dtype=torch.float64) / hd)
        ang = torch.outer(torch.arange(cfg["ctx"], dtype=torch.float64), inv)
        ang = torch.cat([ang, ang], -1)
        self.cos, self.sin = ang.cos().float(), ang.sin().float()
        self.head = w.get("output.weight", w["token_embd.weight"])

    def step(self, tok, position, caches):  # tok: [b]
        c, w = self.cfg, self.w
        nh, nkv = c["n_heads"], c["n_kv"]
        hd = c["d"] // nh
        cos, sin = self.cos[position], self.sin[position]
        x = w["token_embd.weight"][tok]
        b = x.shape[0]
        for i, cache in enumerate(caches):
            p = f"blk.{i}."
            h = rms_norm(x, w[p + "attn_norm.weight"], c["eps"])
            q = (h @ w[p + "attn_q.weight"].T).view(b, nh, 1, hd)
            k = (h @ w[p + "attn_k.weight"].T).view(b, nkv, 1, hd)
            v = (h @ w[p + "attn_v.weight"].T).view(b, nkv, 1, hd)
            q = q * cos + rotate_half(q) * sin
            k = k * cos + rotate_half(k) * sin
            cache.append(k, v, position)
            keys = cache.keys.repeat_interleave(nh // nkv, dim=1)
            values = cache.values.repeat_interleave(nh // nkv, dim=1)
            att = torch.softmax((q @ keys.transpose(2, 3)) / math.sqrt(hd), dim=-1)  # [b, nh, 1, n]
            out = (att @ values).reshape(b, nh * hd)
            cache.observe(att[:, :, 0, :])
            x = x + out @ w[p + "attn_output.weight"].T
            h = rms_norm(x, w[p + "ffn_norm.weight"], c["eps"])
            gate = torch.nn.functional.silu(h @ w[p + "ffn_gate.weight"].T)
            x = x + (gate * (h @ w[p + "ffn_up.weight"].T)) @ w[p + "ffn_down.weight"].T
        x = rms_norm(x, w["output_norm.weight"], c["eps"])
        return x @ self.head.T


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--tokens", required=True)
    ap.add_argument("--policy", default="full")
    ap.add_argument("--k", type=int, default=0)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--out")
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    tokens = torch.tensor(json.load(open(a.tokens)), dtype=torch.long)
    model = Llama(*load(a.model))
    out = {}
    for policy in a.policy.split(","):
        out[policy], line = decode(model, tokens, policy, a.k)
        print(json.dumps(line), flush=True)
    if a.out:
        json.dump(out, open(a.out, "w"))


def decode(model, tokens, policy, k):
    caches = [Cache(policy, k) for _ in range(model.cfg["n_layers"])]
    lps, longest = [], 0
    with torch.no_grad():
        t0 = time.perf_counter()
        for t in range(tokens.shape[1]):
            logits = model.step(tokens[:, t], t, caches)
            if t + 1 < tokens.shape[1]:
                lps.append(torch.log_softmax(logits, -1).gather(1, tokens[:, t + 1 : t + 2])[:, 0])
            longest = max(longest, max(c.pos.shape[2] for c in caches))
        seconds = time.perf_counter() - t0
    line = dict(policy=policy, k=k, batch=tokens.shape[0], seq=tokens.shape[1], threads=torch.get_num_threads(),
                seconds=seconds, tokens_per_s=tokens.numel() / seconds, max_cache_len=longest)
    return torch.stack(lps, 1).tolist(), line


if __name__ == "__main__":
    sys.exit(main())
