#!/usr/bin/env python3
"""Turn normkit_bench JSON (and optionally torch_bench.py JSON) into markdown tables and a PNG.

Usage:
  python3 bench/report.py results.json [torch.json ...] [--md report.md] [--png report.png]
  python3 bench/report.py bench-native.json bench-x86-64-v3.json bench-x86-64-v2.json torch.json ...
  python3 bench/report.py native=old-results.json avx2=other.json ...

One set of tables per ISA: a normkit_bench JSON names the -march it was built for in its context
(normkit_march, from NORMKIT_BENCH_MARCH; see scripts/bench-isa.sh); LABEL=path sets or overrides
it (JSON from binaries older than that field count as "native"). torch_bench.py JSON without a
label joins every ISA's tables: PyTorch, like oneDNN, picks its kernels at run time from the CPU,
not from normkit's -march. With more than one ISA, a first table puts each case's normkit GB/s and
fraction of copy side by side per ISA, and --png writes one plot per ISA (report-<isa>.png).

Python 3 standard library only; the PNG is drawn by gnuplot (pngcairo, else png terminal) through
subprocess, and skipped with a note when gnuplot is missing.

Input: Google Benchmark JSON (--benchmark_out_format=json). With --benchmark_repetitions the
"median" aggregates are used; without, the median of the runs of each name. Names follow
  <Op>/<dir>/<dtype>/<shape>/t<threads>/<impl>[/real_time]
with impl in normkit, eigen, scalar, onednn, torch, and the copy ceilings
  Copy/<r1w1|r2w1>/<dtype>/<shape>/t<threads>/<loop|nt|memcpy>
A case's copy ceiling is the best copy variant moving the same bytes with the same thread count
(r1w1 for forward/eval, r2w1 for backward), whatever shape the copy was named after.
dtype is fp32, fp64 or bf16 (2 bytes). A shape may end in an input scale, "4096x768x1e30": the
same shape and bytes with inputs multiplied by 1e30; such cases also get a table of their ratio
to the unscaled case. The statistics group
  Moments/<function>/<dtype>/<shape>/t<threads>
gets its own table (GB/s and the ratio to run_one_pass on the same rows).
GB/s = bytes_per_second / 1e9 (decimal).
"""

import argparse
import datetime
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile

IMPLS = ["normkit", "copy", "eigen", "scalar", "onednn", "torch"]
BASELINES = ["copy", "unfused", "eigen", "scalar", "onednn", "torch"]
OP_ORDER = {"LayerNorm": 0, "RMSNorm": 1, "BatchNorm": 2, "GroupNorm": 3, "InstanceNorm": 4}
DIR_ORDER = {"fwd": 0, "fwd_train": 0, "bwd": 1, "fwd_eval": 2, "fwd_add": 3, "bwd_add": 4}


def base_name(entry):
    """The benchmark's name without /real_time and aggregate suffixes."""
    name = entry.get("run_name") or entry["name"]
    agg = entry.get("aggregate_name")
    if agg and name.endswith("_" + agg):
        name = name[: -len(agg) - 1]
    name = re.sub(r"/(real_time|manual_time)$", "", name)
    return name


def load(paths):
    """-> ({name: bytes_per_second}, [context dicts])"""
    medians, samples, contexts = {}, {}, []
    for path in paths:
        data = read_json(path)
        contexts.append(data.get("context", {}))
        for e in data.get("benchmarks", []):
            if e.get("error_occurred"):
                continue
            bps = e.get("bytes_per_second")
            if bps is None:
                continue
            name = base_name(e)
            if e.get("run_type") == "aggregate":
                if e.get("aggregate_name") == "median":
                    medians[name] = float(bps)
            else:
                samples.setdefault(name, []).append(float(bps))
    for name, v in samples.items():
        medians.setdefault(name, statistics.median(v))
    return medians, contexts


def read_json(path):
    with open(path) as f:
        return json.load(f)


def split_label(arg):
    """'avx2=results.json' -> ('avx2', 'results.json'); a plain path -> (None, path)."""
    label, sep, path = arg.partition("=")
    if sep and label and not os.path.exists(arg):
        return label, path
    return None, arg


def isa_groups(args):
    """Input arguments -> [(isa label, [paths])] in order of first appearance. Files from
    torch_bench.py without a label go into every group."""
    groups, shared = {}, []
    for arg in args:
        label, path = split_label(arg)
        ctx = read_json(path).get("context", {})
        if label is None:
            if ctx.get("executable") == "torch_bench.py":
                shared.append(path)
                continue
            label = ctx.get("normkit_march", "native")
        groups.setdefault(label, []).append(path)
    if not groups and shared:
        groups["native"] = []
    return [(label, paths + shared) for label, paths in groups.items()]


SCALE_SUFFIX = re.compile(r"x(\d+(?:\.\d+)?e-?\d+)$")


def split_scale(shape):
    """'4096x768x1e30' -> ('4096x768', '1e30'); '4096x768' -> ('4096x768', None)."""
    m = SCALE_SUFFIX.search(shape)
    return (shape[: m.start()], m.group(1)) if m else (shape, None)


GROUPS_SUFFIX = re.compile(r"g\d+$")


def elements(shape):
    """Elements of a shape token; GroupNorm's "g<groups>" suffix is not a dimension."""
    n = 1
    for d in re.findall(r"\d+", GROUPS_SUFFIX.sub("", split_scale(shape)[0])):
        n *= int(d)
    return n


def elem_bytes(dtype):
    return {"fp32": 4, "fp64": 8, "fp16": 2, "bf16": 2}.get(dtype, 4)


def organise_moments(results):
    """Moments/<function>/<dtype>/<shape>/t<threads> -> {(function, dtype, shape, threads): GB/s}"""
    out = {}
    for name, bps in results.items():
        parts = name.split("/")
        if len(parts) == 5 and parts[0] == "Moments":
            out[tuple(parts[1:])] = bps / 1e9
    return out


def organise(results):
    cases = {}  # (op, dir, dtype, shape, threads) -> {impl: GB/s}
    copies = {}  # (pattern, bytes, threads) -> {variant: GB/s}
    for name, bps in results.items():
        parts = name.split("/")
        if len(parts) != 6:
            continue
        op, d, dtype, shape, th, impl = parts
        gbs = bps / 1e9
        if op == "Copy":
            key = (d, elements(shape) * elem_bytes(dtype), th)
            copies.setdefault(key, {})[impl] = gbs
        else:
            cases.setdefault((op, d, dtype, shape, th), {})[impl] = gbs
    for (op, d, dtype, shape, th), impls in cases.items():
        # The copy moving the case's bytes: forward reads x, writes y; backward reads x, dy, writes
        # dx; the residual add reads x and residual, writes h and y (fwd_add), or reads h, dy and
        # dh, writes dx (bwd_add).
        pattern = {"bwd": "r2w1", "fwd_add": "r2w2", "bwd_add": "r3w1"}.get(d, "r1w1")
        variants = copies.get((pattern, elements(shape) * elem_bytes(dtype), th))
        if variants:
            best = max(variants, key=variants.get)
            impls["copy"] = variants[best]
            impls["copy_variant"] = best
    return cases


def sort_key(k):
    op, d, dtype, shape, th = k
    return (OP_ORDER.get(op, 9), op, DIR_ORDER.get(d, 9), d, dtype != "fp32", dtype, shape_rank(shape),
            int(th.lstrip("t") or 0))


def shape_rank(shape):
    # LayerNorm shapes in the order of the bench (by size); BatchNorm by layout.
    for i, p in enumerate(("nchw", "nhwc", "nc")):
        if shape.startswith(p):
            return (i, 0, shape)
    return (0, elements(shape), shape)


def machine_line():
    model, cores = "unknown CPU", os.cpu_count()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return model, cores


def fmt_gbs(v):
    return "—" if v is None else ("%.2f" % v if v < 100 else "%.0f" % v)


def fmt_ratio(a, b):
    if a is None or b is None or b <= 0:
        return "—"
    return "%.2fx" % (a / b)


def moments_table(moments, h="##"):
    """The Moments/... group: GB/s and the ratio to run_one_pass on the unscaled rows."""
    if not moments:
        return []
    out = ["%s Moments (statistics of each row, no output written)\n" % h,
           "Bytes per call = the rows read once. run_one_pass: the shifted one-pass moments alone; "
           "run_moments: the same plus the range check (and, on rows whose squares leave float's range, "
           "max|x| and two more passes on rescaled data); run_max_abs: that extra sweep alone.\n",
           "| function | dtype | shape | thr | GB/s | time / run_one_pass |", "|---|---|---|---|---:|---:|"]
    order = {"run_one_pass": 0, "run_moments": 1, "run_max_abs": 2}
    for k in sorted(moments, key=lambda k: (k[1], split_scale(k[2])[0], split_scale(k[2])[1] or "", k[3],
                                          order.get(k[0], 9), k[0])):
        fn, dtype, shape, th = k
        base = moments.get(("run_one_pass", dtype, split_scale(shape)[0], th))
        # same bytes, so time ratio = inverse GB/s ratio
        ratio = "%.3fx" % (base / moments[k]) if base else "—"
        out.append("| %s | %s | %s | %s | %s | %s |" % (fn, dtype, shape, th.lstrip("t"), fmt_gbs(moments[k]), ratio))
    out.append("")
    return out


def scaled_table(cases, h="##"):
    """Cases with scaled inputs (shape suffix x<scale>) against the same case on ordinary data."""
    rows = []
    for k in sorted(cases, key=sort_key):
        op, d, dtype, shape, th = k
        plain, scale = split_scale(shape)
        if scale is None:
            continue
        for impl, v in cases[k].items():
            if impl in ("copy", "copy_variant") or not isinstance(v, float):
                continue
            base = cases.get((op, d, dtype, plain, th), {}).get(impl)
            cells = ["%s %s" % (op, d), dtype, plain, scale, th.lstrip("t"), impl, fmt_gbs(base), fmt_gbs(v),
                     fmt_ratio(base, v)]  # same bytes: time ratio = inverse GB/s ratio
            rows.append("| " + " | ".join(cells) + " |")
    if not rows:
        return []
    return ["%s Scaled inputs\n" % h,
            "The same case on inputs multiplied by the scale (whose squares overflow the type): "
            "the statistics take their rescaled path on every row.\n",
            "| case | dtype | shape | scale | thr | impl | ordinary GB/s | scaled GB/s | time scaled / ordinary |",
            "|---|---|---|---|---|---|---:|---:|---:|"] + rows + [""]


def run_lines(contexts, sources):
    """Where and how one ISA's numbers were made."""
    ctx = next((c for c in contexts if "normkit_march" in c), contexts[0] if contexts else {})
    out = []
    if "normkit_march" in ctx:
        cap = ctx.get("ONEDNN_MAX_CPU_ISA") or ctx.get("DNNL_MAX_CPU_ISA")
        out.append("- Build: normkit_bench -march=%s (%s); oneDNN %s" % (
            ctx["normkit_march"], ctx.get("normkit_simd", "?"),
            "capped at %s (ONEDNN_MAX_CPU_ISA)" % cap if cap else "picks its kernels from the CPU at run time"))
    if ctx:
        caches = ", ".join("L%d%s %d KiB" % (c.get("level", 0), {"Data": "d", "Instruction": "i"}.get(c.get("type"), ""),
                                              c.get("size", 0) // 1024) for c in ctx.get("caches", []))
        out.append("- Benchmark run: %s on %s (%s CPUs, %s MHz; caches %s; load average %s)" % (
            ctx.get("date", "?"), ctx.get("host_name", "?"), ctx.get("num_cpus", "?"), ctx.get("mhz_per_cpu", "?"),
            caches or "?", ", ".join("%.2f" % x for x in ctx.get("load_avg", [])) or "?"))
    out.append("- Inputs: %s" % ", ".join(sources))
    return out


def markdown_head():
    model, cores = machine_line()
    out = []
    out.append("# normkit benchmark report\n")
    out.append("- Machine: %s, %s logical cores (/proc/cpuinfo of the machine running report.py)" % (model, cores))
    out.append("- Report generated: %s" % datetime.datetime.now().strftime("%Y-%m-%d %H:%M"))
    out.append("- GB/s = bytes per call / median real time, 1 GB = 1e9 B. Bytes per call: forward and eval read x "
               "and write y; backward reads x and dy and writes dx (parameters and statistics not counted). "
               "BatchNorm training forward is charged x once + y, although it must read x twice unless x stays in cache.")
    out.append("- copy = best of loop / non-temporal / memcpy copy (forward) or of loop / non-temporal "
               "`a = b + c` (backward) moving the same bytes with the same threads: the memory-bandwidth ceiling. "
               "Ratios are normkit / baseline: > 1 means normkit is faster; normkit/copy is the fraction of the ceiling.")
    return out


def markdown(cases, moments=None, h="##"):
    """The tables of one ISA; h is the heading level of each table."""
    out = []
    groups = {}
    for k in sorted(cases, key=sort_key):
        groups.setdefault((k[0], k[1]), []).append(k)
    present = {impl for v in cases.values() for impl in v}
    shown = [b for b in BASELINES if b in present]
    for (op, d), keys in groups.items():
        out.append("%s %s %s\n" % (h, op, d))
        head = ["shape", "dtype", "thr", "normkit GB/s"] + ["%s GB/s" % b for b in shown] + \
               ["nk/%s" % b for b in shown]
        out.append("| " + " | ".join(head) + " |")
        out.append("|" + "|".join(["---"] * 3 + ["---:"] * (len(head) - 3)) + "|")
        for k in keys:
            v = cases[k]
            nk = v.get("normkit")
            row = [k[3], k[2], k[4].lstrip("t"), fmt_gbs(nk)]
            for b in shown:
                cell = fmt_gbs(v.get(b))
                if b == "copy" and v.get("copy_variant"):
                    cell += " (%s)" % v["copy_variant"]
                row.append(cell)
            row += [fmt_ratio(nk, v.get(b)) for b in shown]
            out.append("| " + " | ".join(row) + " |")
        out.append("")
    out += scaled_table(cases, h)
    out += moments_table(moments or {}, h)
    # Summary: the slowest normkit cases relative to the copy ceiling.
    rel = [(cases[k]["normkit"] / cases[k]["copy"], k) for k in cases
           if cases[k].get("normkit") and cases[k].get("copy")]
    if rel:
        rel.sort()
        out.append("%s Furthest from the copy ceiling\n" % h)
        out.append("| case | normkit/copy |")
        out.append("|---|---:|")
        for r, k in rel[:10]:
            out.append("| %s | %.2fx |" % ("/".join(k), r))
        out.append("")
    return out


def side_by_side(per_isa):
    """One row per case: for each ISA normkit's GB/s, its fraction of copy (the same binary's copy
    kernels) and its ratio to each peer present in any run (oneDNN, capped to the build's ISA by
    bench-isa.sh; PyTorch from torch_bench.py, the same numbers in every ISA's columns)."""
    labels = [label for label, _ in per_isa]
    keys = sorted({k for _, cases in per_isa for k in cases if cases[k].get("normkit")}, key=sort_key)
    peers = [(b, name) for b, name in (("onednn", "oneDNN"), ("torch", "PyTorch"))
             if any(cases[k].get(b) for _, cases in per_isa for k in cases)]
    head = []
    for label in labels:
        head += ["%s GB/s" % label, "/ copy"] + ["/ %s" % name for _, name in peers]
    out = ["## normkit per ISA\n",
           "normkit GB/s; its fraction of the copy ceiling measured by the same binary (copy kernels built "
           "for the same ISA); and normkit / peer (> 1: normkit faster).\n",
           "| case | dtype | thr | " + " | ".join(head) + " |",
           "|---|---|---|" + "---:|" * len(head)]
    for k in keys:
        cells = []
        for _, cases in per_isa:
            v = cases.get(k, {})
            nk, copy = v.get("normkit"), v.get("copy")
            cells.append("—" if nk is None else fmt_gbs(nk))
            cells.append("%.2f" % (nk / copy) if nk and copy else "—")
            cells += [fmt_ratio(nk, v.get(b)) for b, _ in peers]
        out.append("| %s %s %s | %s | %s | %s |" % (k[0], k[1], k[3], k[2], k[4].lstrip("t"), " | ".join(cells)))
    out.append("")
    return out


def plot(cases, png):
    gp = shutil.which("gnuplot")
    if not gp:
        print("report.py: gnuplot not found, no PNG written", file=sys.stderr)
        return False
    present = {impl for v in cases.values() for impl in v}
    impls = [i for i in IMPLS if i in present]
    ops = [op for op in OP_ORDER if any(k[0] == op for k in cases)]
    if not ops:
        return False
    tmp = tempfile.mkdtemp(prefix="normkit_report_")
    try:
        files = []
        for op in ops:
            keys = sorted((k for k in cases if k[0] == op), key=sort_key)
            path = os.path.join(tmp, "%s.dat" % op)
            with open(path, "w") as f:
                f.write("case " + " ".join(impls) + "\n")
                for k in keys:
                    label = "%s %s %s %s" % (k[1], k[3], k[2], k[4])
                    vals = ["%.4g" % cases[k][i] if isinstance(cases[k].get(i), float) else "?" for i in impls]
                    f.write('"%s" %s\n' % (label, " ".join(vals)))
            files.append((op, path, len(keys)))
        widest = max(n for _, _, n in files)
        longest = 0  # longest x label, in characters
        for _, path, _ in files:
            with open(path) as f:
                longest = max([longest] + [len(line.split('"')[1]) for line in f if line.startswith('"')])
        height = (380 + 8 * longest) * len(files)
        width = max(1200, 26 * widest * max(1, len(impls)) // 2)
        script = []
        script.append("set terminal pngcairo size %d,%d font ',9' noenhanced" % (width, height))
        script.append("set output '%s'" % png.replace("'", "''"))
        script.append("set datafile missing '?'")
        script.append("set style data histograms")
        script.append("set style histogram clustered gap 1")
        script.append("set style fill solid 0.85 border -1")
        script.append("set boxwidth 0.9")
        script.append("set logscale y")
        script.append("set ylabel 'GB/s (log)'")
        script.append("set grid ytics")
        script.append("set key top right outside")
        script.append("set xtics rotate by 45 right scale 0")
        script.append("set bmargin %d" % max(6, int(longest * 0.45) + 1))
        script.append("set autoscale xfix")
        script.append("set offsets 0.6, 0.6, 0, 0")
        script.append("set multiplot layout %d,1" % len(files))
        for op, path, _ in files:
            script.append("set title '%s: GB/s per case (higher is better)'" % op)
            cols = ", ".join("'%s' using %d:xtic(1) title '%s'" % (path, i + 2, name) if i == 0 else
                             "'' using %d title '%s'" % (i + 2, name) for i, name in enumerate(impls))
            script.append("plot " + cols)
        script.append("unset multiplot")
        text = "\n".join(script) + "\n"
        r = subprocess.run([gp], input=text, universal_newlines=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        if r.returncode != 0 and "pngcairo" in r.stderr:
            text = text.replace("set terminal pngcairo", "set terminal png")
            r = subprocess.run([gp], input=text, universal_newlines=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        if r.returncode != 0:
            print("report.py: gnuplot failed:\n" + r.stderr, file=sys.stderr)
            return False
        return True
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("json", nargs="+", help="normkit_bench JSON (one per ISA, or LABEL=path), then optionally "
                    "torch_bench.py JSON")
    ap.add_argument("--md", help="also write the markdown to this file")
    ap.add_argument("--png", help="write a GB/s plot (gnuplot) to this PNG file")
    args = ap.parse_args()
    per_isa = []  # (label, cases, moments, contexts, paths)
    for label, paths in isa_groups(args.json):
        results, contexts = load(paths)
        cases = organise(results)
        if cases:
            per_isa.append((label, cases, organise_moments(results), contexts, paths))
    if not per_isa:
        print("report.py: no normalization cases with bytes_per_second found", file=sys.stderr)
        return 1
    out = markdown_head()
    if len(per_isa) == 1:
        label, cases, moments, contexts, paths = per_isa[0]
        out += run_lines(contexts, [os.path.basename(p) for p in paths]) + [""]
        out += markdown(cases, moments)
    else:
        out += [""] + side_by_side([(label, cases) for label, cases, _, _, _ in per_isa])
        for label, cases, moments, contexts, paths in per_isa:
            out.append("## ISA: %s\n" % label)
            out += run_lines(contexts, [os.path.basename(p) for p in paths]) + [""]
            out += markdown(cases, moments, "###")
    md = "\n".join(out)
    print(md)
    if args.md:
        with open(args.md, "w") as f:
            f.write(md + "\n")
    if args.png:
        for label, cases, _, _, _ in per_isa:
            png = args.png
            if len(per_isa) > 1:
                root, ext = os.path.splitext(args.png)
                png = "%s-%s%s" % (root, re.sub(r"[^A-Za-z0-9_.-]", "_", label), ext or ".png")
            if plot(cases, png):
                print("\nPlot written to %s" % png, file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
