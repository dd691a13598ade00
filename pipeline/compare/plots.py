"""curves.png: IQM curves with their 95% bands, and the last step's performance profiles with
their bands."""

from __future__ import annotations

import io
from pathlib import Path

from pipeline.compare import estimates
from pipeline.compare.analysis import Analysis
from pipeline.compare.writing import write


def plot_curves(a: Analysis, path: Path) -> None:
    """Sample efficiency (left) and the final performance profiles (right), bands from
    rliable's stratified bootstrap."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, prof) = plt.subplots(1, 2, figsize=(11, 4))
    taus = estimates.PROFILE_TAUS
    for arm, curve in a.curves.items():
        (line,) = ax.plot(a.steps, curve.value, "o-", label=arm)
        ax.fill_between(a.steps, curve.low, curve.high, alpha=0.2, color=line.get_color())
        profile = a.profiles[arm]
        prof.plot(taus, profile.value, label=arm, color=line.get_color())
        prof.fill_between(taus, profile.low, profile.high, alpha=0.15, color=line.get_color())
    ax.axhline(1.0, color="k", ls="--", lw=0.8, label="expert")
    ax.axhline(0.0, color="gray", ls=":", lw=0.8, label="uniform random")
    ax.set(xlabel="agent step", ylabel="IQM expert-normalised return", title="sample efficiency")
    prof.set(
        xlabel="normalised return τ",
        ylabel="fraction of runs > τ",
        title=f"performance profile at step {int(a.steps[-1])}",
    )
    for axis in (ax, prof):
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, metadata={"Software": None})
    plt.close(fig)
    write(path, buffer.getvalue())
