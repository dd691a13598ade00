"""The end-to-end report: example frames with their captions, the contact sheet, the probe
with intervals, and the quick comparison's curves, in one self-contained HTML page."""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path

from PIL import Image

from pipeline.inspect.page import read_episodes, render_contact_sheet

# Example frames are shown this many times their recorded size (84 px frames at 252 px).
FRAME_ZOOM = 3
# Example frames per episode (spread over the shown steps).
EXAMPLES_PER_EPISODE = 3


def _img(path_or_bytes: Path | bytes, width: str = "100%") -> str:
    data = path_or_bytes if isinstance(path_or_bytes, bytes) else Path(path_or_bytes).read_bytes()
    encoded = base64.b64encode(data).decode()
    return f'<img src="data:image/png;base64,{encoded}" style="max-width:{width}">'


def _zoomed(png: bytes, zoom: int) -> bytes:
    """The PNG scaled up by ``zoom`` with nearest-neighbour pixels (no blur)."""
    image = Image.open(io.BytesIO(png))
    image = image.resize((image.width * zoom, image.height * zoom), Image.NEAREST)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _examples(data: Path, episodes: list[int], max_steps: int) -> str:
    """Frames at a readable size next to the captions the encoder learns from."""
    rows = []
    for view in read_episodes(data, episodes, max_steps):
        picks = view.steps[:: max(1, len(view.steps) // EXAMPLES_PER_EPISODE)][
            :EXAMPLES_PER_EPISODE
        ]
        for step in picks:
            frame = _zoomed(step.frames["rgb.png"], FRAME_ZOOM)
            text = "".join(
                f"<p><b>{label}</b> {html.escape(caption or 'no caption')}</p>"
                for label, caption in (
                    ("semantic:", step.caption_sem),
                    ("motion:", step.caption_mot),
                )
            )
            rows.append(
                f"<tr><td>{_img(frame, 'none')}</td><td><p>episode {view.episode}, step "
                f"{step.step}</p>{text}</td></tr>"
            )
    return f"<table>{''.join(rows)}</table>"


def _probe_table(probes: dict[str, dict]) -> str:
    labels = list(probes)
    targets = list(next(iter(probes.values()))["r2"])
    head = "".join(f"<th>{html.escape(label)}</th>" for label in labels)
    rows = []
    for target in targets:
        cells = "".join(_r2_cell(probes[label], target) for label in labels)
        rows.append(f"<tr><td>{html.escape(target)}</td>{cells}</tr>")
    return f"<table><tr><th>held-out R² [95% interval]</th>{head}</tr>{''.join(rows)}</table>"


def _r2_cell(result: dict, target: str) -> str:
    value = result["r2"].get(target)
    if value is None:
        return "<td>n/a</td>"
    interval = (result.get("r2_interval") or {}).get(target)
    band = f" [{interval[0]:.2f}, {interval[1]:.2f}]" if interval else ""
    return f"<td>{value:.2f}{band}</td>"


def _study_sections(table_md: str) -> tuple[str, str]:
    """The study's table.md as HTML: its "What it shows" section (the verdict sentences that
    open the page) and the rest (tables, steps to reach), headings moved under this page's."""
    import markdown

    head, _, rest = table_md.partition("## What it shows")
    verdicts, _, tables = rest.partition("\n## ")
    tables = "## " + tables if tables else head
    demoted = "\n".join(
        "#" + line if line.startswith("#") else line for line in tables.splitlines()
    )
    render = lambda text: markdown.markdown(text, extensions=["tables"])  # noqa: E731
    return render(verdicts), render(demoted)


def write_run_report(
    out: Path,
    data: Path,
    probes: dict[str, dict],
    study_report: Path,
    episodes: list[int],
    max_steps: int,
) -> Path:
    """Write ``out/report.html`` (self-contained: images embedded) and return its path."""
    sheet = render_contact_sheet(data, out / "contact_sheet.png", episodes, max_steps)
    verdicts, tables = _study_sections((study_report / "table.md").read_text())
    relative = study_report.relative_to(out) if study_report.is_relative_to(out) else "compare"
    data_dir = data.relative_to(out) if data.is_relative_to(out) else data.name
    page = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>Semore run report</title>
<style>body{{font-family:sans-serif;max-width:1150px;margin:2em auto}}
table{{border-collapse:collapse;margin:1em 0}}td,th{{border:1px solid #ccc;padding:4px 10px;vertical-align:top}}</style>
</head><body>
<h1>Semore run report</h1>
<h2>What the quick comparison shows</h2>
{verdicts}
<p>Files named below are relative to the run folder: the dataset is in <code>{html.escape(str(data_dir))}/</code>, the
study's results in <code>{html.escape(str(relative))}/</code>.</p>
<h2>What the encoder learns from: frames and their captions</h2>
{_examples(data, episodes, max_steps)}
<h2>Data (contact sheet)</h2>{_img(sheet)}
<h2>Representation probe</h2>
<p>Ridge regression from the frozen representation h, fitted on training episodes and scored
on held-out episodes, with 95% intervals from a bootstrap over held-out episodes: the
pretrained encoder, a randomly initialised one, and the encoder SAC learned from scratch.</p>
{_probe_table(probes)}
<h2>Fine-tuning: quick comparison</h2>
<p>Expert-normalised evaluation return (0 = uniform random actions, 1 = the built-in expert),
IQM over seeds with 95% stratified bootstrap intervals (rliable). Per-run CSVs and the
commands: <code>{html.escape(str(relative))}/</code>.</p>
{tables}
{_img(study_report / "curves.png")}
</body></html>
"""
    path = out / "report.html"
    path.write_text(page)
    return path
