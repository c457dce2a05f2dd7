"""The speed checks in one picture: each round's candidate/release ratio, their interquartile
range and the limit, per batch size. It shows at a glance whether a verdict was clear or the
rounds straddled the limit (what "not resolvable on this runner" means)."""

from __future__ import annotations

from pathlib import Path

from ..core.fileio import atomic_path
from .checks import LABELS, Check


def plot_speed(path: Path, checks: list[Check]) -> bool:
    """Write the plot (PNG) when some speed check has per-round ratios; False otherwise."""
    timed = [c for c in checks if c.group == "speed" and c.properties.get("round_ratios")]
    if not timed:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(1.8 + 1.6 * len(timed), 3.6))
    try:
        for x, check in enumerate(timed):
            ratios = check.properties["round_ratios"]
            ax.scatter([x] * len(ratios), ratios, s=14, color="C0", alpha=0.7, zorder=3)
            q25, q75 = check.properties.get("ratio_q25"), check.properties.get("ratio_q75")
            if q25 is not None and q75 is not None:
                ax.vlines(x, q25, q75, linewidth=8, color="C0", alpha=0.3)
            limit = check.properties["ratio_limit"]
            ax.hlines(limit, x - 0.35, x + 0.35, colors="C3", linestyles="--")
            ax.annotate(LABELS[check.status], (x, max(max(ratios), limit)),
                        textcoords="offset points", xytext=(0, 6), ha="center", fontsize=8)
        ax.axhline(1.0, color="grey", linewidth=0.8)
        low, high = ax.get_ylim()
        ax.set_ylim(low, high + 0.1 * (high - low))  # room for the verdicts
        ax.set_xticks(range(len(timed)), [c.name for c in timed], fontsize=8)
        ax.set_xlim(-0.6, len(timed) - 0.4)
        ax.set_ylabel("candidate / release p50, per round")
        ax.set_title("speed: per-round ratios (band: interquartile, dashed: limit)", fontsize=9)
        fig.tight_layout()
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png", dpi=110)
    finally:
        plt.close(fig)
    return True


__all__ = ["plot_speed"]
