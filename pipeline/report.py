"""The end-to-end report: contact sheet, probe table and learning curves in one HTML page."""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path

from pipeline.finetune.eval import metrics_curve, plot_curves
from pipeline.finetune.loop import SUMMARY_NAME
from pipeline.inspect.page import render_contact_sheet


def _img(path: Path) -> str:
    data = base64.b64encode(Path(path).read_bytes()).decode()
    return f'<img src="data:image/png;base64,{data}" style="max-width:100%">'


def _probe_table(probes: dict[str, dict]) -> str:
    labels = list(probes)
    targets = list(next(iter(probes.values()))["r2"])
    head = "".join(f"<th>{html.escape(label)}</th>" for label in labels)
    rows = []
    for target in targets:
        cells = "".join(_r2_cell(probes[label]["r2"].get(target)) for label in labels)
        rows.append(f"<tr><td>{html.escape(target)}</td>{cells}</tr>")
    return f"<table><tr><th>probe target (held-out R²)</th>{head}</tr>{''.join(rows)}</table>"


def _r2_cell(value: float | None) -> str:
    return "<td>n/a</td>" if value is None else f"<td>{value:.3f}</td>"


def _summary_rows(curves: dict[str, Path]) -> str:
    rows = []
    for label, metrics in curves.items():
        summary_path = metrics.parent / SUMMARY_NAME
        summary = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
        final = summary.get("final_eval", {})
        cells = "".join(
            f"<td>{final.get(k, float('nan')):.1f}</td>" for k in ("episode_return", "distance_m")
        )
        rows.append(
            f"<tr><td>{html.escape(label)}</td><td>{summary.get('step', '')}</td>{cells}</tr>"
        )
    head = "<tr><th>run</th><th>agent steps</th><th>final eval return</th><th>final eval distance (m)</th></tr>"
    return f"<table>{head}{''.join(rows)}</table>"


def write_report(
    out: Path,
    data: Path,
    probes: dict[str, dict],
    curves: dict[str, Path],
    episodes: list[int],
    max_steps: int,
) -> Path:
    """Write ``out/report.html`` (self-contained: images embedded) and return its path."""
    sheet = render_contact_sheet(data, out / "contact_sheet.png", episodes, max_steps)
    evals = {label: metrics_curve(path) for label, path in curves.items()}
    curve_png = plot_curves(evals, out / "learning_curves.png")
    page = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>Semore run report</title>
<style>body{{font-family:sans-serif;max-width:1100px;margin:2em auto}}
table{{border-collapse:collapse;margin:1em 0}}td,th{{border:1px solid #ccc;padding:4px 10px}}</style>
</head><body>
<h1>Semore run report</h1>
<p>Run folder: <code>{html.escape(str(out))}</code>; dataset: <code>{html.escape(str(data))}</code>.</p>
<h2>Data (contact sheet)</h2>{_img(sheet)}
<h2>Representation probe</h2>
<p>Ridge regression from the frozen representation h, fitted on training episodes and scored
on held-out episodes: the pretrained encoder vs a randomly initialised one.</p>
{_probe_table(probes)}
<h2>Fine-tuning (SAC + DrQ)</h2>{_summary_rows(curves)}{_img(curve_png)}
</body></html>
"""
    path = out / "report.html"
    path.write_text(page)
    return path
