"""How much of a dataset shows the car off its lane centre: histograms of the lateral offset
for collection policies, side by side in one run.

    python benchmarks/coverage.py [--episodes 40] [--policies mixed perturbed] \
        [--out benchmarks/results/coverage]

Each policy collects ``--episodes`` episodes with the quickstart collect preset (the policy
name overridden) through ``semore-collect``; printed: samples, the fraction more than 0.5 m
and 1 m off the lane centre, the fraction within 2 m of a road edge. Writes a histogram PNG
and a JSON of the numbers.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pipeline.collect.run import main as collect_main  # noqa: E402
from pipeline.data import dataset, schema  # noqa: E402
from pipeline.data.shards import iter_shard  # noqa: E402


def offsets(data: Path) -> tuple[np.ndarray, np.ndarray]:
    """Lateral offsets and nearest road-edge distances of every sample of ``data``."""
    lateral, edge = [], []
    for shard in dataset.completed_shards(data, "raw"):
        for sample in iter_shard(shard):
            state = sample[schema.STATE]
            lateral.append(state["lateral_offset_m"])
            edge.append(min(state["road_edge_left_m"], state["road_edge_right_m"]))
    return np.asarray(lateral), np.asarray(edge)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--episodes", type=int, default=40)
    parser.add_argument("--policies", nargs="+", default=["mixed", "perturbed"])
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks/results/coverage")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for policy in args.policies:
            data = Path(tmp) / policy
            collect_argv = ["--config", "quickstart", "--out", str(data), "--episodes",
                            str(args.episodes), "--policy", policy, "--quiet"]  # fmt: skip
            if collect_main(collect_argv) != 0:
                return 1
            lateral, edge = offsets(data)
            results[policy] = {
                "samples": int(len(lateral)),
                "frac_offset_over_0.5m": float(np.mean(np.abs(lateral) > 0.5)),
                "frac_offset_over_1m": float(np.mean(np.abs(lateral) > 1.0)),
                "frac_within_2m_of_edge": float(np.mean(edge < 2.0)),
                "histogram": np.histogram(lateral, bins=np.linspace(-2, 2, 17))[0].tolist(),
            }
            r = results[policy]
            print(
                f"{policy:10s} {r['samples']:6d} samples  |offset|>0.5 m {r['frac_offset_over_0.5m']:.3f}"
                f"  >1 m {r['frac_offset_over_1m']:.3f}  within 2 m of an edge "
                f"{r['frac_within_2m_of_edge']:.3f}"
            )

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    edges = np.linspace(-2, 2, 17)
    fig, ax = plt.subplots(figsize=(7, 3.5))
    for policy, r in results.items():
        share = np.asarray(r["histogram"]) / max(1, r["samples"])
        ax.step(edges[:-1], share, where="post", label=f"{policy} ({r['samples']} samples)")
    ax.set(
        xlabel="lateral offset from the lane centre (m, > 0 right)",
        ylabel="share of samples",
        yscale="log",
        title=f"{args.episodes} quickstart episodes per policy",
    )
    ax.legend()
    fig.tight_layout()
    fig.savefig(args.out / "lateral_offset.png", dpi=100)
    command = "python benchmarks/coverage.py " + " ".join(sys.argv[1:] if argv is None else argv)
    (args.out / "coverage.json").write_text(
        json.dumps({"command": command.strip(), "policies": results}, indent=2) + "\n"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
