#!/usr/bin/env python3
"""Markdown table of normkit_bench_softmax JSON (+ torch_bench.py JSON): GB/s, fraction of copy, vs PyTorch.

Usage: python3 bench/softmax_report.py softmax.json [torch.json]
GB/s = bytes per call / real time (1 GB = 1e9 B); copy = Copy/<dtype>/<shape>/t1 of the same run.
"""
import json
import sys


def load(path):
    with open(path) as f:
        data = json.load(f)
    out = {}
    for b in data["benchmarks"]:
        if b.get("run_type") == "aggregate" and b.get("aggregate_name") != "median":
            continue
        name = b["run_name"] if b.get("run_type") == "aggregate" else b["name"]
        t = b["real_time"] * {"ns": 1e-9, "us": 1e-6, "ms": 1e-3}[b["time_unit"]]
        out[name.replace("/real_time", "")] = t
    return out


def nbytes(name):
    """Bytes per call from the name: read one (N, C) array, write another (see bench_softmax.cpp)."""
    dtype, shape = name.split("/")[2:4]
    n = 1
    for d in shape.split("x"):
        n *= int(d)
    return 2 * n * {"fp32": 4, "bf16": 2, "fp64": 8}[dtype]


def main():
    nk = load(sys.argv[1])
    torch = load(sys.argv[2]) if len(sys.argv) > 2 else {}
    print("| case | normkit GB/s | copy GB/s | normkit/copy | PyTorch GB/s | normkit/PyTorch |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, t in nk.items():
        if name.startswith("Copy/"):
            continue
        op, d, dtype, shape, th = name.split("/")[:5]
        copy = nk.get("Copy/%s/%s/%s" % (dtype, shape, th))
        tt = torch.get(name + "/torch")
        b = nbytes(name)
        gbs = b / t / 1e9
        row = ["%s %s %s %s" % (op, d, dtype, shape), "%.2f" % gbs]
        row += ["%.2f" % (b / copy / 1e9), "%.2fx" % (copy / t)] if copy else ["—", "—"]
        row += ["%.2f" % (b / tt / 1e9), "%.2fx" % (tt / t)] if tt else ["—", "—"]
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
