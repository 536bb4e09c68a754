"""PNG plots for BENCHMARKS.md (matplotlib, from the ``bench`` extra); each returns its path or None."""

from __future__ import annotations

from pathlib import Path

from .common import ROOT, percentile

PLOTS = ROOT / "bench" / "plots"


def _pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt


def _save(fig: object, name: str) -> str:
    PLOTS.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(PLOTS / name, dpi=90)
    return str((PLOTS / name).relative_to(ROOT))


def latency_plot(levels: list[dict], name: str) -> str | None:
    """Percentiles of end-to-end latency by load, and the batch-size histogram per load."""
    plt = _pyplot()
    if plt is None:
        return None
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    loads = [lv["level"] * 100 for lv in levels]
    for q in (50, 95, 99):
        left.plot(loads, [percentile(lv["e2e"], q) for lv in levels], marker="o", label=f"p{q}")
    left.set_xlabel("load (% of capacity)")
    left.set_ylabel("enqueue -> result (ms)")
    left.legend()
    width = 0.8 / len(levels)
    sizes = sorted({b for lv in levels for b in lv["batches"]})
    for i, lv in enumerate(levels):
        xs = [k + i * width for k in range(len(sizes))]
        right.bar(xs, [lv["batches"].get(s, 0) for s in sizes], width, label=f"{lv['level']:.0%}")
    right.set_xticks([k + 0.4 - width / 2 for k in range(len(sizes))], [str(s) for s in sizes])
    right.set_xlabel("batch size formed")
    right.set_ylabel("jobs")
    right.legend()
    plt.close(fig)
    return _save(fig, name)


def curves_plot(series: dict[str, list[tuple[float, float]]], name: str, xlabel: str, ylabel: str) -> str | None:
    """One line per series of ``(x, y)`` points, log-2 x axis (batch sizes)."""
    plt = _pyplot()
    if plt is None:
        return None
    fig, ax = plt.subplots(figsize=(6, 4))
    for label, points in series.items():
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=label)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.legend()
    plt.close(fig)
    return _save(fig, name)


def bars_plot(labels: list[str], values: list[float], name: str, xlabel: str) -> str | None:
    """Horizontal bars, e.g. images/s per runner."""
    plt = _pyplot()
    if plt is None:
        return None
    fig, ax = plt.subplots(figsize=(8, 0.5 * len(labels) + 1.2))
    ax.barh(labels, values)
    ax.set_xlabel(xlabel)
    ax.invert_yaxis()
    plt.close(fig)
    return _save(fig, name)


def practices_plot(result: dict, out: Path) -> Path | None:
    """A PNG: gain per practice, and images/s by batch size. None without matplotlib (the ``bench`` extra)."""
    plt = _pyplot()
    if plt is None:
        return None
    rows = [r for r in result["practices"] if r["gain"]]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    left.barh([f"{r['practice']}\n{r['with']} vs {r['without']}" for r in rows], [r["gain"] for r in rows])
    left.axvline(1.0, color="grey", lw=1)
    left.set_xlabel("speed-up (x)")
    left.set_title(f"{result['model']} on {result['device']}", fontsize=9)
    sweep = result["sweep"]
    right.plot([t["batch"] for t in sweep], [t["images_per_s"] for t in sweep], marker="o")
    right.set_xscale("log", base=2)
    right.set_xlabel("batch size")
    right.set_ylabel("images/s")
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
