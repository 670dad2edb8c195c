#!/usr/bin/env python3
"""PyTorch (CPU) timings for the normkit_bench cases, written as Google-Benchmark-shaped JSON.

Usage:
  python3 bench/torch_bench.py --out torch.json [--filter REGEX] [--min-time 0.1] [--repetitions 5]
                               [--threads 1,2]
  python3 bench/report.py results.json torch.json --md report.md --png report.png

Needs PyTorch (Debian 12: apt-get install python3-torch, 1.13; run with /usr/bin/python3 when another
python3 comes first in PATH). Optional, not part of CI.

Same cases, names and byte convention as normkit_bench (see bench/README.md); names end in /torch:
  LayerNorm fwd : torch.native_layer_norm (training forward: returns y, mean, rstd)
  LayerNorm bwd : torch.ops.aten.native_layer_norm_backward (dx, dweight, dbias)
  RMSNorm fwd   : x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w (no RMSNorm op in 1.13)
  RMSNorm bwd   : torch.autograd.grad of that graph (retain_graph), dx and dweight
  Softmax, LogSoftmax fwd: torch.softmax / torch.log_softmax(x, -1) (fp32; Softmax also bf16)
  CrossEntropy fwd_bwd : F.cross_entropy(x, t) then torch.autograd.grad (loss and dlogits);
                  bytes = 2 * N * V * 4 (read logits, write dlogits), as normkit_bench_softmax
  BatchNorm     : fwd_train = F.batch_norm(training=True) (updates running stats),
                  bwd = torch.ops.aten.native_batch_norm_backward (train=True, dx, dweight, dbias),
                  fwd_eval = F.batch_norm(training=False); NCHW contiguous, channels-last as
                  torch.channels_last (same logical (N, C, H, W) tensor), (N, C) plain.
  Residual add + norm (fwd_add/bwd_add, fp32 and bf16, 1 thread; the peer of bench_residual.cpp):
    fwd_add       : h = x + r, then native_layer_norm(h) / the RMSNorm graph above on h
    bwd_add       : LayerNorm: native_layer_norm_backward at h, then dx + dh; RMSNorm: autograd.grad
                    of the graph at h, then dx + dh. bf16 runs with bf16 weight and bias (1.13 has
                    no float parameters beside bf16 data on CPU). Bytes: 4 arrays (x, r, h, y or h, dy,
                    dh, dx), as normkit_bench counts them.
  GroupNorm     : fwd_train = F.group_norm (affine); bwd = torch.ops.aten.native_group_norm_backward (dx,
                  dweight, dbias) from native_group_norm's mean and rstd; NCHW and channels_last
                  (shape token with the g<groups> suffix of normkit_bench).
  InstanceNorm  : fwd_train = F.instance_norm(use_input_stats=True) with running stats (updated);
                  fwd_eval = F.instance_norm(use_input_stats=False); bwd = torch.autograd.grad of the
                  training forward (retain_graph: PyTorch has no public instance-norm backward op;
                  it runs batch_norm's on the (1, N*C, ...) view); NCHW and channels_last.
PyTorch allocates its outputs on every call (that is how it is used); large CPU allocations are
fresh mmaps, so the out-of-cache cases include page-fault cost. torch.set_num_threads(t) sets the
intra-op threads. Each repetition runs the op until --min-time seconds have passed (after one
warm-up call) and records the mean time per call; the JSON holds every repetition and their median.
"""

import argparse
import datetime
import json
import re
import socket
import statistics
import sys
import time

try:
    import torch
    import torch.nn.functional as F
except ImportError:  # pragma: no cover
    sys.exit("torch_bench.py: no PyTorch for %s (Debian: apt-get install python3-torch, then run it with "
             "/usr/bin/python3)" % sys.executable)

LN_SHAPES = [(64, 768), (4096, 768), (2048, 4096), (512, 16384), (16384, 4096)]
RES_SHAPES = [(64, 768), (4096, 768), (16384, 4096)]
SOFTMAX_SHAPES = [(4096, 1024), (512, 32000), (64, 128256)]
CE_SHAPES = [(2048, 32000), (512, 128256)]
BN_SHAPES = [("nchw", (32, 64, 56, 56)), ("nhwc", (32, 64, 56, 56)), ("nc", (256, 1024))]
# (op, NCHW shape, groups; 0 = InstanceNorm)
GN_SHAPES = [("GroupNorm", (8, 320, 64, 64), 32), ("GroupNorm", (16, 64, 56, 56), 32),
             ("InstanceNorm", (32, 64, 28, 28), 0)]


def shape_token(layout, nchw):
    if layout == "nchw":
        return "nchw" + "x".join(map(str, nchw))
    if layout == "nhwc":
        n, c, h, w = nchw
        return "nhwc%dx%dx%dx%d" % (n, h, w, c)
    if layout == "nc":
        return "nc" + "x".join(map(str, nchw))
    return "x".join(map(str, nchw))


def cases(threads):
    out = []
    for op in ("LayerNorm", "RMSNorm"):
        for d in ("fwd", "bwd"):
            for shape in LN_SHAPES:
                for dtype in ("fp32", "fp64"):
                    if dtype == "fp64" and shape != (4096, 768):
                        continue
                    for t in threads:
                        out.append(dict(op=op, dir=d, dtype=dtype, layout=None, shape=shape, threads=t))
    for d in ("fwd_train", "bwd", "fwd_eval"):
        for layout, shape in BN_SHAPES:
            for dtype in ("fp32", "fp64"):
                if dtype == "fp64" and layout != "nchw":
                    continue
                for t in threads:
                    out.append(dict(op="BatchNorm", dir=d, dtype=dtype, layout=layout, shape=shape, threads=t))
    for op in ("LayerNorm", "RMSNorm"):
        for d in ("fwd_add", "bwd_add"):
            for dtype in ("fp32", "bf16"):
                for shape in RES_SHAPES:
                    out.append(dict(op=op, dir=d, dtype=dtype, layout=None, shape=shape, threads=1))
    for op, shape, groups in GN_SHAPES:
        for d in ("fwd_train", "bwd", "fwd_eval"):
            if d == "fwd_eval" and op != "InstanceNorm":
                continue
            for layout in ("nchw", "nhwc"):
                for t in threads:
                    out.append(dict(op=op, dir=d, dtype="fp32", layout=layout, shape=shape, threads=t, groups=groups))
    for op in ("Softmax", "LogSoftmax"):
        for shape in SOFTMAX_SHAPES:
            for dtype in ("fp32", "bf16"):
                if dtype == "bf16" and op == "LogSoftmax":
                    continue
                for t in threads:
                    out.append(dict(op=op, dir="fwd", dtype=dtype, layout=None, shape=shape, threads=t))
    for shape in CE_SHAPES:
        for t in threads:
            out.append(dict(op="CrossEntropy", dir="fwd_bwd", dtype="fp32", layout=None, shape=shape, threads=t))
    for c in out:
        suffix = "g%d" % c["groups"] if c.get("groups") else ""
        c["name"] = "%s/%s/%s/%s%s/t%d/torch" % (c["op"], c["dir"], c["dtype"], shape_token(c["layout"], c["shape"]),
                                                suffix, c["threads"])
        n = 1
        for s in c["shape"]:
            n *= s
        esize = {"fp64": 8, "fp32": 4, "bf16": 2}[c["dtype"]]
        c["bytes"] = n * esize * {"bwd": 3, "fwd_add": 4, "bwd_add": 4}.get(c["dir"], 2)
    return out


def make_call(c):
    """Returns a zero-argument function running the case once (setup done here, untimed)."""
    dtype = {"fp64": torch.float64, "fp32": torch.float32, "bf16": torch.bfloat16}[c["dtype"]]
    g = torch.Generator().manual_seed(1)
    shape = c["shape"]
    if c["dir"] in ("fwd_add", "bwd_add"):
        return make_residual_call(c, dtype, g)
    if c["op"] in ("Softmax", "LogSoftmax"):  # torch.softmax / log_softmax over the last axis
        x = (torch.randn(shape, generator=g) * 3).to(torch.bfloat16 if c["dtype"] == "bf16" else dtype)
        op = torch.softmax if c["op"] == "Softmax" else torch.log_softmax
        return lambda: op(x, -1)
    if c["op"] == "CrossEntropy":  # F.cross_entropy forward + backward (autograd): loss, then dlogits
        x = (torch.randn(shape, generator=g) * 3).requires_grad_(True)
        t = torch.randint(0, shape[1], (shape[0],), generator=g)

        def fwd_bwd():
            loss = F.cross_entropy(x, t)
            return torch.autograd.grad(loss, [x])
        return fwd_bwd
    x = (torch.rand(shape, generator=g, dtype=dtype) * 4 - 1.5)
    dy = (torch.rand(shape, generator=g, dtype=dtype) * 2 - 1)
    if c["op"] in ("LayerNorm", "RMSNorm"):
        feat = shape[-1]
        w = torch.rand(feat, generator=g, dtype=dtype) + 0.5
        b = torch.rand(feat, generator=g, dtype=dtype) - 0.5
        if c["op"] == "LayerNorm":
            eps = 1e-5
            y, mean, rstd = torch.native_layer_norm(x, [feat], w, b, eps)
            if c["dir"] == "fwd":
                return lambda: torch.native_layer_norm(x, [feat], w, b, eps)
            mask = [True, True, True]
            return lambda: torch.ops.aten.native_layer_norm_backward(dy, x, [feat], mean, rstd, w, b, mask)
        eps = 1e-6

        def rms(xx, ww):
            return xx * torch.rsqrt(xx.pow(2).mean(-1, keepdim=True) + eps) * ww

        if c["dir"] == "fwd":
            return lambda: rms(x, w)
        xg = x.clone().requires_grad_(True)
        wg = w.clone().requires_grad_(True)
        yg = rms(xg, wg)
        return lambda: torch.autograd.grad(yg, [xg, wg], dy, retain_graph=True)
    if c["op"] in ("GroupNorm", "InstanceNorm"):
        return make_grouped_call(c, x, dy, g, dtype)
    # BatchNorm
    ch = shape[1]
    if c["layout"] == "nhwc":
        x = x.contiguous(memory_format=torch.channels_last)
        dy = dy.contiguous(memory_format=torch.channels_last)
    w = torch.rand(ch, generator=g, dtype=dtype) + 0.5
    b = torch.rand(ch, generator=g, dtype=dtype) - 0.5
    rm = torch.zeros(ch, dtype=dtype)
    rv = torch.ones(ch, dtype=dtype)
    eps = 1e-5
    y, save_mean, save_invstd = torch.native_batch_norm(x, w, b, rm, rv, True, 0.1, eps)
    if c["dir"] == "fwd_train":
        return lambda: F.batch_norm(x, rm, rv, w, b, training=True, momentum=0.1, eps=eps)
    if c["dir"] == "fwd_eval":
        return lambda: F.batch_norm(x, rm, rv, w, b, training=False, momentum=0.1, eps=eps)
    mask = [True, True, True]
    return lambda: torch.ops.aten.native_batch_norm_backward(dy, x, w, rm, rv, save_mean, save_invstd, True, eps,
                                                             mask)


def make_residual_call(c, dtype, g):
    """x + r then the norm (fwd_add), or the norm's backward at h then + dh (bwd_add), eagerly."""
    shape, feat = c["shape"], c["shape"][-1]
    x = (torch.rand(shape, generator=g) * 4 - 1.5).to(dtype)
    r = (torch.rand(shape, generator=g) * 2 - 1).to(dtype)
    dy = (torch.rand(shape, generator=g) * 2 - 1).to(dtype)
    dh = (torch.rand(shape, generator=g) * 2 - 1).to(dtype)
    w = (torch.rand(feat, generator=g) + 0.5).to(dtype)
    b = (torch.rand(feat, generator=g) - 0.5).to(dtype)
    if c["op"] == "LayerNorm":
        eps = 1e-5
        if c["dir"] == "fwd_add":
            return lambda: torch.native_layer_norm(x + r, [feat], w, b, eps)
        h = x + r
        _, mean, rstd = torch.native_layer_norm(h, [feat], w, b, eps)
        mask = [True, True, True]
        return lambda: torch.ops.aten.native_layer_norm_backward(dy, h, [feat], mean, rstd, w, b, mask)[0] + dh
    eps = 1e-6

    def rms(hh, ww):
        return hh * torch.rsqrt(hh.pow(2).mean(-1, keepdim=True) + eps) * ww

    if c["dir"] == "fwd_add":
        return lambda: rms(x + r, w)
    hg = (x + r).requires_grad_(True)
    wg = w.clone().requires_grad_(True)
    yg = rms(hg, wg)

    def bwd():
        dx, dw = torch.autograd.grad(yg, [hg, wg], dy, retain_graph=True)
        return dx + dh, dw

    return bwd
def make_grouped_call(c, x, dy, g, dtype):
    shape = c["shape"]
    n, ch = shape[0], shape[1]
    hw = 1
    for s in shape[2:]:
        hw *= s
    if c["layout"] == "nhwc":
        x = x.contiguous(memory_format=torch.channels_last)
        dy = dy.contiguous(memory_format=torch.channels_last)
    w = torch.rand(ch, generator=g, dtype=dtype) + 0.5
    b = torch.rand(ch, generator=g, dtype=dtype) - 0.5
    eps = 1e-5
    if c["op"] == "GroupNorm":
        groups = c["groups"]
        if c["dir"] == "fwd_train":
            return lambda: F.group_norm(x, groups, w, b, eps)
        y, mean, rstd = torch.native_group_norm(x, w, b, n, ch, hw, groups, eps)
        mask = [True, True, True]
        return lambda: torch.ops.aten.native_group_norm_backward(dy, x, mean, rstd, w, n, ch, hw, groups, mask)
    rm = torch.zeros(ch, dtype=dtype)
    rv = torch.ones(ch, dtype=dtype)
    if c["dir"] == "fwd_train":
        return lambda: F.instance_norm(x, rm, rv, w, b, use_input_stats=True, momentum=0.1, eps=eps)
    if c["dir"] == "fwd_eval":
        return lambda: F.instance_norm(x, rm, rv, w, b, use_input_stats=False, momentum=0.1, eps=eps)
    xg = x.clone().requires_grad_(True)
    wg = w.clone().requires_grad_(True)
    bg = b.clone().requires_grad_(True)
    yg = F.instance_norm(xg, rm, rv, wg, bg, use_input_stats=True, momentum=0.1, eps=eps)
    return lambda: torch.autograd.grad(yg, [xg, wg, bg], dy, retain_graph=True)


def time_case(c, min_time, repetitions):
    torch.set_num_threads(c["threads"])
    fn = make_call(c)
    with torch.no_grad() if c["dir"] not in ("bwd", "bwd_add", "fwd_bwd") else _nullctx():
        fn()  # warm-up
        reps = []
        for _ in range(repetitions):
            iters, start = 0, time.perf_counter()
            while True:
                fn()
                iters += 1
                elapsed = time.perf_counter() - start
                if elapsed >= min_time:
                    break
            reps.append((elapsed / iters, iters))
    return reps


class _nullctx:
    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="torch.json")
    ap.add_argument("--filter", default="", help="regex on the benchmark name (like --benchmark_filter)")
    ap.add_argument("--min-time", type=float, default=0.1, help="seconds per repetition")
    ap.add_argument("--repetitions", type=int, default=5)
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--list", action="store_true", help="list the case names and exit")
    args = ap.parse_args()
    threads = [int(t) for t in args.threads.split(",") if t.strip()]
    todo = [c for c in cases(threads) if re.search(args.filter, c["name"])]
    if args.list:
        print("\n".join(c["name"] for c in todo))
        return 0
    torch.set_grad_enabled(True)
    bench = []
    for c in todo:
        reps = time_case(c, args.min_time, args.repetitions)
        for i, (t, iters) in enumerate(reps):
            bench.append(dict(name=c["name"], run_name=c["name"], run_type="iteration", repetitions=len(reps),
                              repetition_index=i, threads=1, iterations=iters, real_time=t * 1e6, cpu_time=t * 1e6,
                              time_unit="us", bytes_per_second=c["bytes"] / t))
        med = statistics.median(t for t, _ in reps)
        bench.append(dict(name=c["name"] + "_median", run_name=c["name"], run_type="aggregate",
                          aggregate_name="median", repetitions=len(reps), threads=1,
                          iterations=len(reps), real_time=med * 1e6, cpu_time=med * 1e6, time_unit="us",
                          bytes_per_second=c["bytes"] / med))
        print("%-55s %12.1f us %8.2f GB/s" % (c["name"], med * 1e6, c["bytes"] / med / 1e9), flush=True)
    ctx = dict(date=datetime.datetime.now().astimezone().isoformat(timespec="seconds"), host_name=socket.gethostname(),
               executable="torch_bench.py", torch_version=torch.__version__,
               torch_parallel_info=torch.__config__.parallel_info().splitlines()[0:3])
    with open(args.out, "w") as f:
        json.dump(dict(context=ctx, benchmarks=bench), f, indent=1)
    print("wrote %s (%d cases)" % (args.out, len(todo)), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
