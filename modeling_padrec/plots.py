"""The benchmark's PNG plots: speedup with p10–p90 bars, α by step, α by slot, latency distribution."""

from __future__ import annotations

from pathlib import Path

PLOTS = ("speedup.png", "alpha_by_step.png", "alpha_by_slot.png", "latency.png")
TREE_PLOT = "tree_confidence.png"  # only when the report has a calibrated draft tree


def _figure(figsize):
    """A figure drawn straight to a file: matplotlib's object API, no pyplot state and no backend switch, so a
    notebook's own plotting is left alone."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize)
    return fig, fig.add_subplot()


def _title(report: dict, what: str) -> str:
    hw = report["hardware"]
    device = hw.get("gpu") or f"{hw['cpu']} ({hw['torch_threads']} threads)"
    return f"{what}\n{report['config']['measured_requests']} requests, {device}"


def plot_report(report: dict, runs: dict, out: Path) -> list[Path]:
    """Write the four plots of ``report`` (per-request ``runs`` for the latency distribution) into ``out``."""
    methods = report["methods"]
    names = list(methods)
    written = []

    fig, ax = _figure(figsize=(1.2 * len(names) + 2, 4))
    med = [methods[n]["speedup"] for n in names]
    lo = [methods[n]["speedup"] - methods[n]["speedup_p10"] for n in names]
    hi = [methods[n]["speedup_p90"] - methods[n]["speedup"] for n in names]
    ax.bar(names, med, yerr=[lo, hi], capsize=4, color="tab:blue")
    ax.axhline(1.0, color="grey", lw=0.8, ls="--")
    for i, v in enumerate(med):
        ax.text(i, v, f"{v:.2f}×", ha="center", va="bottom", fontsize=8)
    ax.set_ylabel("speedup over ar (median, p10–p90)")
    ax.set_title(_title(report, "Speedup"), fontsize=9)
    ax.tick_params(axis="x", rotation=30)
    written.append(_save(fig, out / "speedup.png"))

    fig, ax = _figure(figsize=(6, 4))
    for n in names:
        alphas = methods[n]["alpha_by_step"]
        if alphas:
            ax.plot(range(len(alphas)), alphas, marker="o", label=n)
    ax.set_xlabel("draft step k (engine: k-th drafted choice)")
    ax.set_ylabel("α_k (accepted | steps < k accepted)")
    ax.set_ylim(0, 1.02)
    if ax.get_lines():  # a report without a drafting method has nothing to label
        ax.legend(fontsize=8, loc="lower left")
    ax.set_title(_title(report, "Acceptance by draft step"), fontsize=9)
    written.append(_save(fig, out / "alpha_by_step.png"))

    slots = sorted({s for n in names for s in methods[n]["alpha_by_slot"]}, key=lambda s: (len(s) > 1, s))
    drafting = [n for n in names if methods[n]["alpha_by_slot"]]
    fig, ax = _figure(figsize=(max(6, 1.1 * len(slots) + 2), 4))
    width = 0.8 / max(1, len(drafting))
    for j, n in enumerate(drafting):
        values = [methods[n]["alpha_by_slot"].get(s, float("nan")) for s in slots]  # never reached: no bar
        ax.bar([i + j * width for i in range(len(slots))], values, width, label=n)
    ax.set_xticks([i + width * (len(drafting) - 1) / 2 for i in range(len(slots))], slots)
    ax.set_xlabel("item slot of the drafted position (code level a, b, ...; sep; other = end of list)")
    ax.set_ylabel("acceptance")
    ax.set_ylim(0, 1.02)
    if drafting:
        ax.legend(fontsize=8, loc="lower left")
    ax.set_title(_title(report, "Acceptance by item slot"), fontsize=9)
    written.append(_save(fig, out / "alpha_by_slot.png"))

    fig, ax = _figure(figsize=(1.2 * len(names) + 2, 4))
    ax.boxplot([[m.latency_ms for m in runs[n]] for n in names], showfliers=True)
    ax.set_xticks(range(1, len(names) + 1), names, rotation=30)
    ax.set_ylabel("latency per request (ms)")
    ax.set_title(_title(report, "Latency distribution"), fontsize=9)
    written.append(_save(fig, out / "latency.png"))

    calibrated = {n: methods[n]["calibration"] for n in names if methods[n].get("calibration")}
    if calibrated:  # draft trees: the draft's confidence against acceptance, one curve per level
        fig, ax = _figure(figsize=(6, 4.5))
        ax.plot([0, 1], [0, 1], color="grey", lw=0.8, ls="--")
        for n, cal in calibrated.items():
            for level in cal["confidence"]:
                xs = [c["confidence"] for c in level["curve"]]
                ys = [c["accepted"] for c in level["curve"]]
                ax.plot(xs, ys, marker="o", label=f"{n} level {level['level']}")
        ax.set_xlabel("draft's probability of the drafted choice (bin mean)")
        ax.set_ylabel("share the target accepted")
        ax.set_xlim(0, 1.02)
        ax.set_ylim(0, 1.02)
        ax.legend(fontsize=6, loc="upper left", ncol=2)
        ax.set_title(_title(report, "Draft confidence vs acceptance by tree level (calibration)"), fontsize=9)
        written.append(_save(fig, out / TREE_PLOT))
    return written


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path
