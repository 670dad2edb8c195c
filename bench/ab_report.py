#!/usr/bin/env python3
"""Table of an A/B run (scripts/bench-ab.sh): per case the median real time of each side over the
rounds and their ratio; then the cases outside +-3% and the geometric mean of the ratios."""
import json
import statistics
import sys

UNIT_US = {"ns": 1e-3, "us": 1.0, "ms": 1e3, "s": 1e6}


def medians(folder, side, rounds):
    runs = []
    for k in range(1, rounds + 1):
        with open(f"{folder}/{side}{k}.json") as f:
            runs.append({b["name"]: b["real_time"] * UNIT_US[b["time_unit"]] for b in json.load(f)["benchmarks"]
                         if b.get("run_type", "iteration") == "iteration"})
    names = [n for n in runs[0] if all(n in r for r in runs)]
    return {n: statistics.median(r[n] for r in runs) for n in names}


def main():
    folder, rounds = sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 5
    a, b = medians(folder, "A", rounds), medians(folder, "B", rounds)
    rows = [(n.replace("/real_time", ""), a[n], b[n], b[n] / a[n]) for n in a if n in b]
    print("| case | before (us) | after (us) | after/before |\n|---|---:|---:|---:|")
    for name, ta, tb, q in rows:
        print(f"| {name} | {ta:.1f} | {tb:.1f} | {q:.3f} |")
    outside = sorted((r for r in rows if abs(r[3] - 1) > 0.03), key=lambda r: -r[3])
    print(f"\n{len(rows)} cases, geomean {statistics.geometric_mean(r[3] for r in rows):.3f}, "
          f"median {statistics.median(r[3] for r in rows):.3f}; outside +-3%: {len(outside)}")
    for name, ta, tb, q in outside:
        print(f"  {name}: {q:.3f}")


if __name__ == "__main__":
    main()
