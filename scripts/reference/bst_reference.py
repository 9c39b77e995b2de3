"""The obvious PyTorch alternative to bst's layers: SLIDE, BST:SH:S4D, BRECT:FIXED:SKIP and the
CPU-profile language model, in PyTorch eager, written the way a PyTorch user would write them
(nn.Module per layer, F.scaled_dot_product_attention over blocks, the S4D kernel as in
state-spaces/s4 `models/s4/s4d.py`).

Module attributes mirror bst's variable names (`layers.1.mixer.ssm.conv.s4d.log_dt`), so a
safetensors file written by bst loads with `load_state_dict` directly. Shapes are bst's:
`[batch, seq, d_model]` at layer boundaries, `[batch, seq, n_heads, head_dim]` for heads.

Semantics (tested against bst within 1e-4 in f32 by `bst-perf --parity-only`, run in the suite):
- SLIDE (meliad's window): each query attends to the W tokens strictly before it; a query with no
  key (the first token of a text) outputs zero, which PyTorch's SDPA gives for fully masked rows.
- BST:SH:S4D: the SSM sublayer (d -> d/4, S4D ZOH kernel, causal FFT convolution, D skip, GELU,
  d/4 -> d) gives one context state per position; each block cross-attends causally to the states
  at its own positions; self- and cross-attention are concatenated and projected.
- BRECT:FIXED:SKIP: blocks in sequence; tokens attend to [previous block; own block] and to the
  recurrent state; the state attends to itself and the block; a fixed sigmoid gate.
"""

import math

import torch
import torch.nn as nn
import torch.nn.functional as F


class Rope(nn.Module):
    """Rotary position embedding, half-split layout, at absolute positions."""

    def __init__(self, head_dim, base=10_000.0):
        super().__init__()
        half = head_dim // 2
        inv_freq = torch.exp(torch.arange(half, dtype=torch.float32) * (-2.0 * math.log(base) / head_dim))
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def forward(self, x, start=0):  # x: [b, seq, h, d]
        seq, half = x.shape[1], x.shape[-1] // 2
        pos = torch.arange(start, start + seq, dtype=torch.float32, device=x.device)
        angles = torch.outer(pos, self.inv_freq).view(seq, 1, half)
        cos, sin = angles.cos().to(x.dtype), angles.sin().to(x.dtype)
        x1, x2 = x[..., :half], x[..., half:]
        return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], -1)


def sliding_pair_mask(w, device):
    """[W, 2W] bool: query i (column W + i) sees columns i .. W + i - 1 (the W tokens before it)."""
    i = torch.arange(w, device=device).unsqueeze(1)
    c = torch.arange(2 * w, device=device).unsqueeze(0)
    return (c >= i) & (c < i + w)


def to_blocks(x, w):  # [b, seq, h, d] -> [b * nb, h, W, d]
    b, seq, h, d = x.shape
    return x.view(b, seq // w, w, h, d).transpose(2, 3).reshape(b * (seq // w), h, w, d)


def from_blocks(y, b):  # [b * nb, h, W, d] -> [b, seq, h, d]
    n, h, w, d = y.shape
    return y.view(b, n // b, h, w, d).transpose(2, 3).reshape(b, n // b * w, h, d)


def sliding_block_attention(q, k, v, w, previous=None):
    """meliad's sliding window over blocks of W: every query sees the W tokens before it. Block 0
    reads `previous` = (rotated keys, values, visible [b] bool) of the block before, if any."""
    b, seq, h, d = q.shape
    nb = seq // w
    if previous is None:
        pk, pv = k.new_zeros(b, w, h, d), v.new_zeros(b, w, h, d)
        visible = torch.zeros(b, dtype=torch.bool, device=q.device)
    else:
        pk, pv, visible = previous
    keys = torch.cat([pk, k], 1).unfold(1, 2 * w, w)  # [b, nb, h, d, 2W]
    values = torch.cat([pv, v], 1).unfold(1, 2 * w, w)
    keys = keys.permute(0, 1, 2, 4, 3).reshape(b * nb, h, 2 * w, d)
    values = values.permute(0, 1, 2, 4, 3).reshape(b * nb, h, 2 * w, d)
    mask = sliding_pair_mask(w, q.device).expand(b, nb, w, 2 * w).clone()
    mask[:, 0, :, :w] &= visible.view(b, 1, 1)  # block 0: the previous block only if carried
    y = F.scaled_dot_product_attention(to_blocks(q, w), keys, values, attn_mask=mask.view(b * nb, 1, w, 2 * w))
    return from_blocks(y, b)


class BlockAttentionHeads(nn.Module):
    """Fused q/k/v projection, rotary positions, sliding-window attention (no output projection).
    With `carry`, the last block's un-rotated keys/values are kept for the next call."""

    def __init__(self, d_model, n_heads, window, carry=False):
        super().__init__()
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.rope = Rope(d_model // n_heads)
        self.h, self.w, self.carry = n_heads, window, carry
        self.cache = None

    def forward(self, x):
        b, seq, d = x.shape
        q, k, v = self.qkv(x).view(b, seq, 3, self.h, d // self.h).unbind(2)
        previous = None
        if self.carry and self.cache is not None:
            ck, cv = self.cache
            previous = (self.rope(ck, -self.w), cv, torch.ones(b, dtype=torch.bool, device=x.device))
        y = sliding_block_attention(self.rope(q), self.rope(k), v, self.w, previous)
        if self.carry:
            self.cache = (k[:, -self.w:].detach(), v[:, -self.w:].detach())
        return y


class Slide(nn.Module):
    """SLIDE: sliding-window self-attention and an output projection."""

    def __init__(self, d_model, n_heads, window, carry=False):
        super().__init__()
        self.heads = BlockAttentionHeads(d_model, n_heads, window, carry)
        self.out = nn.Linear(d_model, d_model)

    def forward(self, x):
        return self.out(self.heads(x).flatten(2))


class S4DKernel(nn.Module):
    """s4d.py's S4DKernel (ZOH), with bst's parameter names."""

    def __init__(self, channels, state_size=16):
        super().__init__()
        n2 = state_size // 2
        self.log_dt = nn.Parameter(torch.zeros(channels))
        self.c = nn.Parameter(torch.zeros(channels, n2, 2))
        self.log_a_real = nn.Parameter(torch.zeros(channels, n2))
        self.a_imag = nn.Parameter(torch.zeros(channels, n2))

    def forward(self, seq):  # -> [channels, seq]
        dt = torch.exp(self.log_dt)
        c = torch.view_as_complex(self.c)
        a = torch.complex(-torch.exp(self.log_a_real), self.a_imag)
        dt_a = a * dt.unsqueeze(-1)
        k = dt_a.unsqueeze(-1) * torch.arange(seq, device=a.device)  # [h, n, seq]
        c = c * (torch.exp(dt_a) - 1.0) / a
        return 2 * torch.einsum("hn,hnl->hl", c, torch.exp(k)).real


class SsmConv(nn.Module):
    def __init__(self, channels, state_size=16):
        super().__init__()
        self.s4d = S4DKernel(channels, state_size)
        self.d = nn.Parameter(torch.zeros(channels))

    def forward(self, u):  # [b, channels, seq]
        seq = u.shape[-1]
        k = self.s4d(seq)
        # FFTs in f32 even under bf16 autocast (as bst does: bf16 FFTs lose too much precision)
        u_f, k_f = torch.fft.rfft(u.float(), n=2 * seq), torch.fft.rfft(k.float(), n=2 * seq)
        y = torch.fft.irfft(u_f * k_f, n=2 * seq)[..., :seq].to(u.dtype)
        return y + u * self.d.unsqueeze(-1)


class SsmSublayer(nn.Module):
    """d -> d/4, SSM, GELU, d/4 -> d."""

    def __init__(self, d_model, state_size=16, proj_factor=4):
        super().__init__()
        ch = d_model // proj_factor
        self.down = nn.Linear(d_model, ch)
        self.conv = SsmConv(ch, state_size)
        self.up = nn.Linear(ch, d_model)

    def forward(self, x):  # [b, seq, d] -> [b, seq, d]
        u = self.down(x).transpose(1, 2)
        return self.up(F.gelu(self.conv(u)).transpose(1, 2))


class BstSh(nn.Module):
    """BST:SH:S4D: SSM context states at every position, SLIDE self-attention, block-causal
    cross-attention to the states, one output projection."""

    def __init__(self, d_model, n_heads, window, state_size=16, carry=False):
        super().__init__()
        self.ssm = SsmSublayer(d_model, state_size)
        self.self_attn = BlockAttentionHeads(d_model, n_heads, window, carry)
        self.cross_q = nn.Linear(d_model, d_model)
        self.cross_kv = nn.Linear(d_model, 2 * d_model)
        self.out = nn.Linear(2 * d_model, d_model)
        self.h, self.w = n_heads, window

    def forward(self, x):
        b, seq, d = x.shape
        context = self.ssm(x)  # [b, seq, d]
        y_self = self.self_attn(x).flatten(2)
        q = self.cross_q(x).view(b, seq, self.h, d // self.h)
        k, v = self.cross_kv(context).view(b, seq, 2, self.h, d // self.h).unbind(2)
        y_cross = F.scaled_dot_product_attention(to_blocks(q, self.w), to_blocks(k, self.w), to_blocks(v, self.w), is_causal=True)
        y_cross = from_blocks(y_cross, b).flatten(2)
        return self.out(torch.cat([y_self, y_cross], -1))


class Brect(nn.Module):
    """BRECT:FIXED:SKIP from a fresh state: blocks in sequence, a Python loop over blocks."""

    def __init__(self, d_model, n_heads, window, states):
        super().__init__()
        lin = nn.Linear
        self.token_qkv, self.token_q_cross = lin(d_model, 3 * d_model), lin(d_model, d_model)
        self.state_norm = nn.LayerNorm(d_model)
        self.state_qkv, self.state_q_cross = lin(d_model, 3 * d_model), lin(d_model, d_model)
        self.vertical_out, self.horizontal_out = lin(2 * d_model, d_model), lin(2 * d_model, d_model)
        self.state_ids = nn.Parameter(torch.zeros(states, d_model))
        self.initial_state = nn.Parameter(torch.zeros(states, d_model))
        self.gate_bias = nn.Parameter(torch.zeros(d_model))
        self.rope = Rope(d_model // n_heads)
        self.h, self.w = n_heads, window
        self.block_fn = self.block  # torch.compile replaces this with a compiled block

    def heads(self, x, n):  # [b, t, n * d] -> n x [b, t, h, hd]
        b, t, _ = x.shape
        return x.view(b, t, n, self.h, -1).unbind(2)

    @staticmethod
    def attend(q, k, v, mask=None):  # [b, n, h, hd]
        t = lambda x: x.transpose(1, 2)
        return t(F.scaled_dot_product_attention(t(q), t(k), t(v), attn_mask=mask))

    def block(self, x, state, pk, pv, mask):
        w = self.w
        q, k, v = self.heads(self.token_qkv(x), 3)
        (q_cross,) = self.heads(self.token_q_cross(x), 1)
        state_in = self.state_norm(state) + self.state_ids
        sq, sk, sv = self.heads(self.state_qkv(state_in), 3)
        (q_state_cross,) = self.heads(self.state_q_cross(state_in), 1)
        keys = torch.cat([self.rope(pk, 0), self.rope(k, w)], 1)
        values = torch.cat([pv, v], 1)
        y_self = self.attend(self.rope(q, w), keys, values, mask).flatten(2)
        y_cross = self.attend(q_cross, sk, sv).flatten(2)
        out = self.vertical_out(torch.cat([y_self, y_cross], -1))
        s_self = self.attend(sq, sk, sv).flatten(2)
        s_cross = self.attend(q_state_cross, k, v).flatten(2)
        update = self.horizontal_out(torch.cat([s_self, s_cross], -1))
        gate = torch.sigmoid(self.gate_bias)
        return out, state * gate + update * (1 - gate), k, v

    def forward(self, x):
        b, seq, d = x.shape
        w = self.w
        state = self.initial_state.unsqueeze(0).expand(b, -1, -1)
        pk = x.new_zeros(b, w, self.h, d // self.h)
        pv = pk
        pair = sliding_pair_mask(w, x.device)
        first = pair.clone()
        first[:, :w] = False  # block 0 has no previous block
        outputs = []
        for j in range(seq // w):
            out, state, pk, pv = self.block_fn(x[:, j * w:(j + 1) * w], state, pk, pv, first if j == 0 else pair)
            outputs.append(out)
        return torch.cat(outputs, 1)


class Mlp(nn.Module):
    def __init__(self, d_model, hidden):
        super().__init__()
        self.fc, self.proj = nn.Linear(d_model, hidden), nn.Linear(hidden, d_model)

    def forward(self, x):
        return self.proj(F.gelu(self.fc(x)))


class Layer(nn.Module):
    def __init__(self, mixer, d_model, mlp_ratio):
        super().__init__()
        self.norm1, self.mixer = nn.LayerNorm(d_model), mixer
        self.norm2, self.mlp = nn.LayerNorm(d_model), Mlp(d_model, mlp_ratio * d_model)

    def forward(self, x):
        x = x + self.mixer(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class LanguageModel(nn.Module):
    """bst's decoder LM with SLIDE layers and BST:SH:S4D at `ssm_layers` (the CPU profile)."""

    def __init__(self, vocab, n_layers, d_model, n_heads, window, ssm_layers, mlp_ratio=4, state_size=16, carry=False):
        super().__init__()
        self.embed = nn.Embedding(vocab, d_model)

        def mixer(i):
            if i in ssm_layers:
                return BstSh(d_model, n_heads, window, state_size, carry)
            return Slide(d_model, n_heads, window, carry)

        self.layers = nn.ModuleList([Layer(mixer(i), d_model, mlp_ratio) for i in range(n_layers)])
        self.norm = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, vocab)

    def forward(self, tokens):
        x = self.embed(tokens)
        for layer in self.layers:
            x = layer(x)
        return self.head(self.norm(x))

    def loss(self, tokens, targets):
        logits = self(tokens)
        return F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), ignore_index=-100)


def bst_name(name):
    """bst's variable name of a reference parameter: SLIDE's heads have no `heads.` level."""
    return name.replace("heads.qkv", "qkv")


def load_bst_weights(module, tensors):
    """Loads a bst safetensors dict into `module`, every parameter and no other."""
    own = dict(module.named_parameters())
    missing = [n for n in own if bst_name(n) not in tensors]
    unknown = sorted(set(tensors) - {bst_name(n) for n in own})
    if missing or unknown:
        raise KeyError(f"weights do not match the reference: missing {missing}, unexpected {unknown}")
    with torch.no_grad():
        for n, p in own.items():
            t = tensors[bst_name(n)]
            if tuple(t.shape) != tuple(p.shape):
                raise ValueError(f"{n}: bst has {tuple(t.shape)}, the reference {tuple(p.shape)}")
            p.copy_(t)
