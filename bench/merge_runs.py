#!/usr/bin/env python3
"""Merge repeated runs of one benchmark binary into one JSON: per benchmark, the median over the runs.

Usage: python3 bench/merge_runs.py OUT.json RUN1.json RUN2.json [...]

On a shared VM a case's time moves between processes of the same binary (the README's Performance
section: up to 1.8x), more than within one process. Running the whole benchmark a few times and
taking, per benchmark, the median of the runs' medians gives tables that hold from one day to the
next. Each input is Google Benchmark JSON (normkit_bench, normkit_bench_softmax) or
bench/torch_bench.py JSON; a benchmark's value in a run is its "median" aggregate when the run has
one, else the median of its repetitions. The output keeps the first run's context and entries, with
real_time (and bytes_per_second) replaced by the median over the runs and "merged_runs" set to how
many runs had the benchmark. bench/report.py and bench/softmax_report.py read it as they read a run.
Python 3 standard library only.
"""
import json
import statistics
import sys

UNIT = {"ns": 1e-9, "us": 1e-6, "ms": 1e-3, "s": 1.0}


def seconds(b):
    return b["real_time"] * UNIT[b["time_unit"]]


def per_benchmark(doc):
    """name -> the entry standing for that benchmark in one run."""
    medians, reps = {}, {}
    for b in doc["benchmarks"]:
        if b.get("run_type") == "aggregate":
            if b.get("aggregate_name") == "median":
                medians[b["run_name"]] = b
            continue
        reps.setdefault(b.get("run_name", b["name"]), []).append(b)
    for name, runs in reps.items():
        if name not in medians:
            runs = sorted(runs, key=seconds)
            medians[name] = runs[len(runs) // 2]
    return medians


def main():
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    out, paths = sys.argv[1], sys.argv[2:]
    docs = []
    for p in paths:
        with open(p) as f:
            docs.append(json.load(f))
    runs = [per_benchmark(d) for d in docs]
    merged = dict(docs[0])
    merged["benchmarks"] = []
    for name, first in runs[0].items():
        times = [seconds(r[name]) for r in runs if name in r]
        t = statistics.median(times)
        entry = dict(first)
        entry["real_time"] = t / UNIT[first["time_unit"]]
        if "bytes_per_second" in first:
            entry["bytes_per_second"] = first["bytes_per_second"] * seconds(first) / t
        entry["merged_runs"] = len(times)
        merged["benchmarks"].append(entry)
    with open(out, "w") as f:
        json.dump(merged, f, indent=1)


if __name__ == "__main__":
    main()
