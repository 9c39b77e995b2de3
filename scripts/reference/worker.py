"""The PyTorch side of `bst-perf`: a long-lived process that builds the reference layers and
model of bst_reference.py from bst's weights, checks parity and times them on request, so that
bst's and PyTorch's timings interleave in one invocation on the same machine and threads.

Protocol: one JSON object per line on stdin, one JSON answer per line on stdout (everything the
libraries print goes to stderr). Every answer has `ok`; a failure has `error` instead of failing
the process, so that e.g. a torch.compile error only empties the compile row.

    {"op": "init", "threads": 2, "device": "cpu", "precision": "f32"}
    {"op": "layer", "name": "slide", "arch": "SLIDE", "d_model": 128, "n_heads": 4, "window": 32,
     "state_size": 16, "context_states": 16, "weights": "slide.safetensors"}
    {"op": "parity", "name": "slide", "inputs": "in.safetensors", "out": "out.safetensors"}
    {"op": "time", "name": "slide", "impl": "eager", "seq": 4096, "batch": 1,
     "direction": "forward+backward", "runs": 3}                        -> {"seconds": [...]}
    {"op": "lm", "name": "lm", "vocab": 256, "n_layers": 4, ..., "weights": ..., "groups": ...}
    {"op": "lm_parity", "name": "lm", "inputs": ..., "out": ...}
    {"op": "train", "name": "lm", "impl": "eager", "batch": 16, "seq": 256, "steps": 2}
    {"op": "memory_probe", <lm fields without weights>, "batch": 1, "seq": 4096} -> {"bytes": ...}
    {"op": "gemm", "n": 2048, "runs": 3}                                   -> {"seconds": [...]}
"""

import copy
import gc
import json
import os
import re
import sys
import time
import traceback

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

ANSWERS = os.fdopen(os.dup(sys.stdout.fileno()), "w", buffering=1)
os.dup2(sys.stderr.fileno(), sys.stdout.fileno())  # library prints must not corrupt the protocol

import torch  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402

import bst_reference as ref  # noqa: E402

STATE = {"device": torch.device("cpu"), "precision": "f32", "layers": {}, "compiled": {}, "lms": {}, "inputs": {}}


def sync():
    if STATE["device"].type == "cuda":
        torch.cuda.synchronize()


def autocast():
    enabled = STATE["precision"] == "bf16"
    return torch.autocast(STATE["device"].type, dtype=torch.bfloat16, enabled=enabled)


def op_init(msg):
    torch.set_num_threads(int(msg["threads"]))
    STATE["device"] = torch.device(msg.get("device", "cpu"))
    STATE["precision"] = msg.get("precision", "f32")
    torch.manual_seed(0)
    name = torch.cuda.get_device_name() if STATE["device"].type == "cuda" else "cpu"
    return {"torch": torch.__version__, "device": name, "threads": torch.get_num_threads()}


def build_layer(msg):
    arch, d, h, w = msg["arch"], msg["d_model"], msg["n_heads"], msg["window"]
    if arch == "SLIDE":
        return ref.Slide(d, h, w)
    if arch == "BST:SH:S4D":
        return ref.BstSh(d, h, w, msg.get("state_size", 16))
    if arch == "BRECT:FIXED:SKIP":
        return ref.Brect(d, h, w, msg["context_states"])
    raise ValueError(f"no reference for {arch}")


def op_layer(msg):
    layer = build_layer(msg)
    ref.load_bst_weights(layer, load_file(msg["weights"]))
    STATE["layers"][msg["name"]] = (msg["arch"], layer.to(STATE["device"]), msg["d_model"])
    return {"parameters": sum(p.numel() for p in layer.parameters())}


def compiled(name):
    """The torch.compile version of a layer (Inductor): BRECT's block step is compiled and its
    Python loop over blocks kept (compiling the unrolled loop of thousands of blocks is not
    practical); the other layers are compiled whole."""
    if name not in STATE["compiled"]:
        arch, layer, _ = STATE["layers"][name]
        twin = copy.deepcopy(layer)
        if arch == "BRECT:FIXED:SKIP":
            twin.block_fn = torch.compile(twin.block, dynamic=False)
        else:
            twin = torch.compile(twin, dynamic=False)
        STATE["compiled"][name] = twin
    return STATE["compiled"][name]


def grads_of(module):
    return {f"grad.{ref.bst_name(n)}": p.grad.detach().float().cpu().contiguous() for n, p in module.named_parameters() if p.grad is not None}


def op_parity(msg):
    _, layer, _ = STATE["layers"][msg["name"]]
    inputs = load_file(msg["inputs"])
    x = inputs["x"].to(STATE["device"]).requires_grad_(True)
    layer.zero_grad(set_to_none=True)
    y = layer(x)
    (y * inputs["grad_y"].to(STATE["device"])).sum().backward()
    out = {"y": y.detach().float().cpu().contiguous(), "grad.x": x.grad.float().cpu().contiguous(), **grads_of(layer)}
    save_file(out, msg["out"])
    return {}


def layer_input(batch, seq, d):
    key = (batch, seq, d)
    if key not in STATE["inputs"]:
        STATE["inputs"].clear()
        g = torch.Generator().manual_seed(seq)
        STATE["inputs"][key] = torch.randn(batch, seq, d, generator=g).to(STATE["device"])
    return STATE["inputs"][key]


def timed(fn, runs):
    seconds = []
    for _ in range(runs):
        sync()
        start = time.perf_counter()
        fn()
        sync()
        seconds.append(time.perf_counter() - start)
    return seconds


def op_time(msg):
    _, layer, d = STATE["layers"][msg["name"]]
    module = compiled(msg["name"]) if msg["impl"] == "compile" else layer
    x = layer_input(msg["batch"], msg["seq"], d)
    if msg["direction"] == "forward":
        def run():
            with torch.no_grad(), autocast():
                module(x)
    else:
        def run():
            xg = x.detach().requires_grad_(True)
            with autocast():
                y = module(xg)
            y.float().sum().backward()
    return {"seconds": timed(run, int(msg["runs"]))}


def op_gemm(msg):
    n = int(msg["n"])
    dtype = torch.bfloat16 if msg.get("precision", STATE["precision"]) == "bf16" else torch.float32
    a = torch.randn(n, n, device=STATE["device"]).to(dtype)
    b = torch.randn(n, n, device=STATE["device"]).to(dtype)
    return {"seconds": timed(lambda: torch.mm(a, b), int(msg["runs"]))}


class Lm:
    """A reference LM with AdamW in bst's parameter groups (decay / no decay / SSM at lr_scale)."""

    def __init__(self, msg):
        self.model = ref.LanguageModel(msg["vocab"], msg["n_layers"], msg["d_model"], msg["n_heads"], msg["window"], set(msg["ssm_layers"]), msg["mlp_ratio"], msg["state_size"], carry=msg.get("carry", False))
        if "weights" in msg:  # else random weights (memory probes)
            ref.load_bst_weights(self.model, load_file(msg["weights"]))
        self.model.to(STATE["device"])
        groups = {}
        if "groups" in msg:
            with open(msg["groups"]) as f:
                groups = json.load(f)
        by_group = {"decay": [], "no_decay": [], "ssm": []}
        for n, p in self.model.named_parameters():
            by_group[groups.get(ref.bst_name(n), "decay")].append(p)
        lr, wd = msg["lr"], msg["weight_decay"]
        self.opt = torch.optim.AdamW(
            [
                {"params": by_group["decay"], "weight_decay": wd},
                {"params": by_group["no_decay"], "weight_decay": 0.0},
                {"params": by_group["ssm"], "weight_decay": 0.0, "lr": lr * msg["ssm_lr_scale"]},
            ],
            lr=lr, betas=tuple(msg["betas"]), eps=1e-8,
        )
        self.clip, self.vocab = msg["grad_clip"], msg["vocab"]
        self.compiled = None
        self.generator = torch.Generator().manual_seed(0)

    def step(self, model, tokens, targets):
        self.opt.zero_grad(set_to_none=True)
        with autocast():
            loss = model.loss(tokens, targets)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.clip)
        self.opt.step()
        return loss.item()

    def batch(self, batch, seq):
        t = torch.randint(self.vocab, (batch, seq + 1), generator=self.generator).to(STATE["device"])
        return t[:, :-1], t[:, 1:]

    def module(self, impl):
        if impl == "compile":
            if self.compiled is None:
                self.compiled = torch.compile(self.model, dynamic=False)
            return self.compiled
        return self.model


def op_lm(msg):
    STATE["lms"][msg["name"]] = Lm(msg)
    return {"parameters": sum(p.numel() for p in STATE["lms"][msg["name"]].model.parameters())}


def op_lm_parity(msg):
    lm = STATE["lms"][msg["name"]]
    inputs = load_file(msg["inputs"])
    lm.model.zero_grad(set_to_none=True)
    loss = lm.model.loss(inputs["tokens"].to(STATE["device"]), inputs["targets"].to(STATE["device"]))
    loss.backward()
    save_file({"loss": loss.detach().float().cpu().reshape(1), **grads_of(lm.model)}, msg["out"])
    return {}


def op_train(msg):
    lm = STATE["lms"][msg["name"]]
    model = lm.module(msg["impl"])
    seconds, losses = [], []
    for _ in range(int(msg["steps"])):
        tokens, targets = lm.batch(msg["batch"], msg["seq"])
        sync()
        start = time.perf_counter()
        losses.append(lm.step(model, tokens, targets))
        sync()
        seconds.append(time.perf_counter() - start)
    return {"seconds": seconds, "losses": losses}


def resident_bytes(field):
    with open("/proc/self/status") as f:
        return int(re.search(rf"{field}:\s+(\d+) kB", f.read()).group(1)) * 1024


def op_memory_probe(msg):
    """Peak memory of two training steps of a freshly built model (random weights), above what
    this process held before building it: on CUDA the allocator's peak, on the CPU the peak
    resident set (Linux: VmHWM, reset through /proc/self/clear_refs). Ask a fresh worker: memory
    that the allocator keeps from earlier work is reused without showing up."""
    torch.ones(16).sum().item()  # runtime up
    gc.collect()
    cuda = STATE["device"].type == "cuda"
    if cuda:
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
    else:
        base = resident_bytes("VmRSS")
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    lm = Lm(msg)
    model = lm.module(msg.get("impl", "eager"))
    for _ in range(2):
        tokens, targets = lm.batch(msg["batch"], msg["seq"])
        lm.step(model, tokens, targets)
    peak = torch.cuda.max_memory_allocated() if cuda else resident_bytes("VmHWM")
    return {"bytes": peak - base}


OPS = {"init": op_init, "layer": op_layer, "parity": op_parity, "time": op_time, "gemm": op_gemm, "lm": op_lm, "lm_parity": op_lm_parity, "train": op_train, "memory_probe": op_memory_probe}


def main():
    for line in sys.stdin:
        msg = json.loads(line)
        if msg["op"] == "quit":
            break
        try:
            answer = {"ok": True, **OPS[msg["op"]](msg)}
        except Exception as e:  # reported to the caller, which decides
            traceback.print_exc(file=sys.stderr)
            answer = {"ok": False, "error": f"{type(e).__name__}: {str(e)[:500]}"}
        ANSWERS.write(json.dumps(answer) + "\n")


if __name__ == "__main__":
    main()
