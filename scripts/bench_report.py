#!/usr/bin/env python3
"""Turns the hyperfine JSON exports of scripts/bench.sh into summary.md, summary.json and
time-vs-files.svg. Standard library only, so the benchmark needs nothing from pip.

    bench_report.py OUT                          full report from OUT/raw (and OUT/rss.tsv)
    bench_report.py --brief RAW CASE FILES FRAC [LOAD_BEFORE LOAD_AFTER]
                                                 one progress line for one case
"""

import glob
import json
import math
import os
import statistics
import sys
from collections import defaultdict

# Which contender each case compares kiln with, and the target ratio kiln/peer (None: no target).
PEERS = {
    "switch-full": ("rsync", None),
    "switch-nochange": ("rsync", 0.5),
    "switch-changed": ("rsync", 0.5),
    "snapshot-changed": ("rsync", 0.5),
    "bake": ("tar-zstd", 1.0),
    "unpack": ("zstd-tar", 1.0),
    "push-cooking": ("git-only", None),
    "push-final": ("git-only", None),
}
TITLES = {
    "switch-full": "switch run/: full copy",
    "switch-nochange": "switch run/: no change",
    "switch-changed": "switch run/: files changed",
    "snapshot-changed": "data snapshot: files changed",
    "bake": "bake (tar + zstd -3)",
    "unpack": "unpack (zstd -d + tar -x)",
    "push-cooking": "git push to live, cooking",
    "push-final": "git push to live, final",
}
PUSH_OVERHEAD_TARGET = 0.100  # seconds, at 1,000 files
RSS_TARGET_KIB = 64 * 1024


def load(raw):
    """{(case, files, frac): {name: [seconds, ...]}} pooled over rounds."""
    data = defaultdict(lambda: defaultdict(list))
    for path in sorted(glob.glob(os.path.join(raw, "*.json"))):
        base = os.path.basename(path)[: -len(".json")]
        parts = base.split(".")
        # CASE.FILES.FRAC(with its own dot).rK
        case, files = parts[0], int(parts[1])
        frac = ".".join(parts[2:-1])
        with open(path) as f:
            for r in json.load(f)["results"]:
                data[(case, files, frac)][r["command"]].extend(r["times"])
    return data


def fmt(s):
    if s is None:
        return "-"
    if s < 1:
        return f"{s * 1000:.0f} ms" if s >= 0.01 else f"{s * 1000:.1f} ms"
    return f"{s:.2f} s"


def pct(frac):
    f = float(frac)
    return "-" if f == 0 else f"{f * 100:g}%"


def brief(raw, case, files, frac, load_before=None, load_after=None):
    if load_before is not None:
        # Other work on the machine slows both contenders, but not always equally: keep the
        # 1-minute load average around each case next to its numbers.
        with open(os.path.join(raw, "load.tsv"), "a") as f:
            f.write(f"{case}\t{files}\t{frac}\t{load_before}\t{load_after}\n")
    data = load(raw)
    times = data.get((case, int(files), frac), {})
    parts = [f"{name} {fmt(statistics.median(t))}" for name, t in times.items()]
    peer = PEERS.get(case, (None,))[0]
    if "kiln" in times and peer in times:
        k, p = statistics.median(times["kiln"]), statistics.median(times[peer])
        if p > 0:
            parts.append(f"ratio {k / p:.2f}")
    print(" " + ", ".join(parts))


def loads(raw):
    out = {}
    p = os.path.join(raw, "load.tsv")
    if os.path.exists(p):
        with open(p) as f:
            for line in f:
                case, files, frac, a, b = line.rstrip("\n").split("\t")
                out[(case, int(files), frac)] = max(float(a), float(b))
    return out


def rows(data, load_by_case=None):
    load_by_case = load_by_case or {}
    out = []
    for (case, files, frac), times in sorted(
        data.items(), key=lambda kv: (list(PEERS).index(kv[0][0]), kv[0][1], float(kv[0][2]))
    ):
        peer, target = PEERS[case]
        med = {name: statistics.median(t) for name, t in times.items()}
        k, p = med.get("kiln"), med.get(peer)
        row = {
            "case": case,
            "files": files,
            "changed": float(frac),
            "runs": len(times.get("kiln", [])),
            "medians": med,
            "peer": peer,
            "ratio": (k / p) if k is not None and p else None,
            "target": target,
            "load": load_by_case.get((case, files, frac)),
        }
        if case.startswith("push-") and k is not None and p is not None:
            row["overhead"] = k - p
            if files == 1000:
                row["target"] = f"overhead < {PUSH_OVERHEAD_TARGET * 1000:.0f} ms"
                row["met"] = row["overhead"] < PUSH_OVERHEAD_TARGET
        elif target is not None and row["ratio"] is not None:
            # The targets are stated for 1% changed; other fractions are there to show growth.
            if case in ("switch-changed", "snapshot-changed") and float(frac) != 0.01:
                row["target"] = None
            else:
                row["met"] = row["ratio"] <= target
        out.append(row)
    return out


def markdown(rs, rss):
    lines = [
        "| case | files | changed | kiln | peer | peer time | kiln/peer | target | met | load |",
        "|---|---:|---:|---:|---|---:|---:|---|---|---:|",
    ]
    for r in rs:
        med = r["medians"]
        target = r.get("target")
        if isinstance(target, float):
            target = f"<= {target:g}"
        met = {True: "yes", False: "**no**"}.get(r.get("met"), "")
        ratio = "-" if r["ratio"] is None else f"{r['ratio']:.2f}"
        load = "" if r.get("load") is None else f"{r['load']:.1f}"
        kiln = fmt(med.get("kiln"))
        if "overhead" in r:
            kiln += f" (+{fmt(r['overhead'])})"
        lines.append(
            f"| {TITLES[r['case']]} | {r['files']:,} | {pct(r['changed'])} | {kiln} "
            f"| {r['peer']} | {fmt(med.get(r['peer']))} | {ratio} | {target or ''} | {met} "
            f"| {load} |"
        )
    extra = [r for r in rs if any(n not in ("kiln", r["peer"]) for n in r["medians"])]
    if extra:
        lines += [
            "",
            "Without the final flush to disk (`kiln-nosync`: the same code minus syncfs/fsync, "
            "which rsync and zstd do not do):",
            "",
            "| case | files | changed | kiln | kiln-nosync | peer | nosync/peer |",
            "|---|---:|---:|---:|---:|---:|---:|",
        ]
        for r in extra:
            med = r["medians"]
            ns, p = med.get("kiln-nosync"), med.get(r["peer"])
            ratio = f"{ns / p:.2f}" if ns is not None and p else "-"
            lines.append(
                f"| {TITLES[r['case']]} | {r['files']:,} | {pct(r['changed'])} | "
                f"{fmt(med.get('kiln'))} | {fmt(ns)} | {fmt(p)} | {ratio} |"
            )
    lines += ["", "load: the highest 1-minute load average seen around the case "
              "(the machine has " + str(os.cpu_count()) + " cores; above that, other work competed "
              "for the CPU while this case ran)."]
    if rss:
        lines += ["", "Peak RSS on a 2 GB tree (largest process of the command):", "",
                  "| command | peak RSS | wall time | target |", "|---|---:|---:|---|"]
        for name, kib, secs in rss:
            target = ""
            if name.startswith("kiln"):
                target = "yes (< 64 MiB)" if kib < RSS_TARGET_KIB else "**no** (>= 64 MiB)"
            lines.append(f"| {name} | {kib / 1024:.1f} MiB | {secs:.2f} s | {target} |")
    lines += ["", "Growth with file count (median seconds per 1,000 files):", ""]
    sizes = sorted({r["files"] for r in rs if not r["case"].startswith("push")})
    lines.append("| case | contender | " + " | ".join(f"{s:,}" for s in sizes) + " |")
    lines.append("|---|---|" + "---:|" * len(sizes))
    for case in PEERS:
        if case.startswith("push"):
            continue
        at = {r["files"]: r for r in rs if r["case"] == case and r["changed"] in (0, 0.01)}
        if not at:
            continue
        names = sorted({n for r in at.values() for n in r["medians"]}, key=lambda n: (n != "kiln", n))
        for name in names:
            cells = []
            for s in sizes:
                m = at.get(s, {}).get("medians", {}).get(name)
                cells.append("-" if m is None else f"{m / s * 1000 * 1000:.1f} ms")
            lines.append(f"| {TITLES[case]} | {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


COLORS = {"kiln": "#d9480f", "kiln-nosync": "#f59f00", "rsync": "#1c7ed6", "tar-zstd": "#1c7ed6",
          "zstd-tar": "#1c7ed6", "git-only": "#1c7ed6"}


def svg(rs, path):
    """Small multiples: one log-log panel of median time against file count per case."""
    cases = [c for c in PEERS if not c.startswith("push")
             and any(r["case"] == c for r in rs)]
    pw, ph, ml, mb, mt, mr = 300, 210, 58, 34, 26, 12
    cols = 3
    nrows = max(1, math.ceil(len(cases) / cols))
    width, height = cols * pw, nrows * ph + 30
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
           f'font-family="sans-serif" font-size="11">',
           f'<rect width="{width}" height="{height}" fill="white"/>']
    for idx, case in enumerate(cases):
        x0, y0 = (idx % cols) * pw, (idx // cols) * ph
        series = defaultdict(list)
        for r in rs:
            if r["case"] == case and r["changed"] in (0, 0.01):
                for name, m in r["medians"].items():
                    series[name].append((r["files"], max(m, 1e-4)))
        xs = [x for s in series.values() for x, _ in s]
        ys = [y for s in series.values() for _, y in s]
        if not xs:
            continue
        lx0, lx1 = math.log10(min(xs)) - 0.1, math.log10(max(xs)) + 0.1
        ly0, ly1 = math.floor(math.log10(min(ys))), math.ceil(math.log10(max(ys)))
        if ly1 == ly0:
            ly1 += 1

        def X(v):
            return x0 + ml + (math.log10(v) - lx0) / (lx1 - lx0) * (pw - ml - mr)

        def Y(v):
            return y0 + ph - mb - (math.log10(v) - ly0) / (ly1 - ly0) * (ph - mb - mt)

        title = TITLES[case] + (" (1%)" if "changed" in case else "")
        out.append(f'<text x="{x0 + ml}" y="{y0 + 16}" font-weight="bold">{title}</text>')
        out.append(f'<rect x="{x0 + ml}" y="{y0 + mt}" width="{pw - ml - mr}" '
                   f'height="{ph - mb - mt}" fill="none" stroke="#999"/>')
        for e in range(ly0, ly1 + 1):
            y = Y(10 ** e)
            label = fmt(10 ** e)
            out.append(f'<line x1="{x0 + ml}" x2="{x0 + pw - mr}" y1="{y:.1f}" y2="{y:.1f}" '
                       f'stroke="#eee"/>')
            out.append(f'<text x="{x0 + ml - 4}" y="{y + 4:.1f}" text-anchor="end">{label}</text>')
        for v in sorted(set(xs)):
            x = X(v)
            out.append(f'<text x="{x:.1f}" y="{y0 + ph - mb + 14}" text-anchor="middle">{v:,}</text>')
        out.append(f'<text x="{x0 + ml + (pw - ml - mr) / 2}" y="{y0 + ph - 6}" '
                   f'text-anchor="middle" fill="#555">files</text>')
        for i, (name, pts) in enumerate(sorted(series.items(), key=lambda kv: kv[0] != "kiln")):
            pts.sort()
            color = COLORS.get(name, "#555")
            d = " ".join(f"{X(x):.1f},{Y(y):.1f}" for x, y in pts)
            out.append(f'<polyline points="{d}" fill="none" stroke="{color}" stroke-width="2"/>')
            for x, y in pts:
                out.append(f'<circle cx="{X(x):.1f}" cy="{Y(y):.1f}" r="3" fill="{color}"/>')
            ly = y0 + mt + 12 + i * 13
            out.append(f'<text x="{x0 + ml + 6}" y="{ly}" fill="{color}">{name}</text>')
    out.append(f'<text x="8" y="{height - 10}" fill="#555">median wall time, log-log; '
               f'kiln in orange, its peer in blue</text>')
    out.append("</svg>")
    with open(path, "w") as f:
        f.write("\n".join(out) + "\n")


def main():
    if len(sys.argv) in (6, 8) and sys.argv[1] == "--brief":
        brief(*sys.argv[2:])
        return
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    out = sys.argv[1]
    raw = os.path.join(out, "raw")
    rs = rows(load(raw), loads(raw))
    rss = []
    rss_path = os.path.join(out, "rss.tsv")
    if os.path.exists(rss_path):
        with open(rss_path) as f:
            for line in f:
                name, kib, secs = line.split("\t")
                rss.append((name, int(kib), float(secs)))
    md = markdown(rs, rss)
    for name in ("first-push.txt", "final-mode.txt"):
        p = os.path.join(out, name)
        if os.path.exists(p):
            with open(p) as f:
                md += "\n" + "".join("    " + l for l in f)
    with open(os.path.join(out, "summary.md"), "w") as f:
        f.write(md)
    with open(os.path.join(out, "summary.json"), "w") as f:
        json.dump({"rows": rs, "rss": rss}, f, indent=1)
    svg(rs, os.path.join(out, "time-vs-files.svg"))


if __name__ == "__main__":
    main()
