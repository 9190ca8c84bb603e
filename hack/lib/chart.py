#!/usr/bin/env python3
"""Draws hack/bench's chart from its JSON results.

    python3 hack/lib/chart.py target/bench/cri.json target/bench/cri.png

Left: grouped bars of the median client-side time of each CRI operation, runc and podnet side
by side, with a whisker from the median up to the p90. Right: shim memory per pod (median RSS
and PSS of the pods' shims, whisker up to the max), with the 4 MB RSS target.
"""
import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

COLORS = {"runc": "#8c8c8c", "podnet": "#2a7ab0"}
LABELS = {"runc": "runc shim + reference CNI", "podnet": "podnet shim"}


def main(src, dst):
    r = json.load(open(src))
    ops = r["ops_order"]
    handlers = ["runc", "podnet"]
    fig, (ax, axm) = plt.subplots(
        1, 2, figsize=(13, 5.2), gridspec_kw={"width_ratios": [3.2, 1]}
    )

    width = 0.38
    xs = range(len(ops))
    for k, h in enumerate(handlers):
        med = [r["ops"][op][h]["median_ms"] for op in ops]
        p90 = [r["ops"][op][h]["p90_ms"] for op in ops]
        pos = [x + (k - 0.5) * width for x in xs]
        err = [[0] * len(ops), [max(0.0, p - m) for m, p in zip(med, p90)]]
        bars = ax.bar(pos, med, width, color=COLORS[h], label=LABELS[h],
                      yerr=err, capsize=3, error_kw={"elinewidth": 1, "ecolor": "#333"})
        for b, m, top in zip(bars, med, p90):
            ax.annotate(f"{m:.0f}" if m >= 10 else f"{m:.1f}",
                        (b.get_x() + b.get_width() / 2, max(m, top)), xytext=(0, 2),
                        textcoords="offset points", ha="center", va="bottom", fontsize=7)
    ax.set_xticks(list(xs))
    ax.set_xticklabels(ops, rotation=20, ha="right", fontsize=9)
    ax.set_ylabel("ms (median; whisker: p90)")
    ax.set_title(f"CRI lifecycle, {r['n']} pods per handler, interleaved")
    ax.legend(loc="upper center", fontsize=9)
    ax.set_ylim(top=ax.get_ylim()[1] * 1.08)
    ax.grid(axis="y", alpha=0.3)
    ax.set_axisbelow(True)

    mem = r["memory"]
    kinds = [("RSS", "rss"), ("PSS", "pss")]
    for k, h in enumerate(handlers):
        med = [mem[h][f"{key}_median_mib"] for _, key in kinds]
        mx = [mem[h][f"{key}_max_mib"] for _, key in kinds]
        pos = [x + (k - 0.5) * width for x in range(len(kinds))]
        err = [[0] * len(kinds), [max(0.0, b - a) for a, b in zip(med, mx)]]
        bars = axm.bar(pos, med, width, color=COLORS[h], label=LABELS[h],
                       yerr=err, capsize=3, error_kw={"elinewidth": 1, "ecolor": "#333"})
        for b, m, top in zip(bars, med, mx):
            axm.annotate(f"{m:.1f}", (b.get_x() + b.get_width() / 2, max(m, top)), xytext=(0, 2),
                         textcoords="offset points", ha="center", va="bottom", fontsize=8)
    axm.axhline(4e6 / 2**20, color="#c0392b", linestyle="--", linewidth=1)
    axm.text(1.45, 4e6 / 2**20, "4 MB target", color="#c0392b", fontsize=8,
             ha="right", va="bottom")
    axm.set_xticks(range(len(kinds)))
    axm.set_xticklabels([k for k, _ in kinds])
    axm.set_ylabel("MiB per pod's shim (median; whisker: max)")
    axm.set_title(f"Shim memory, {r['pods_for_memory']} pods running")
    axm.grid(axis="y", alpha=0.3)
    axm.set_axisbelow(True)

    m = r["machine"]
    fig.suptitle(f"podnet vs runc through containerd {m['containerd']} CRI "
                 f"({m['cpus']} CPUs, kernel {m['kernel']})", fontsize=11)
    fig.tight_layout()
    fig.savefig(dst, dpi=110)


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: chart.py RESULTS.json OUT.png")
    main(sys.argv[1], sys.argv[2])
