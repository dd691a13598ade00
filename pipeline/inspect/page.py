"""``semore-inspect``: look at a dataset -- an HTML page and a PNG contact sheet of its steps.

The page is self-contained (frames embedded as base64 PNG data URIs): per episode, every
step's frame(s), both captions when the dataset is annotated, the action, reward and key
state (speed, lane, lead distance, collision), under a header taken from the manifest.
The contact sheet is a grid of frames labelled with step and reward, one row block per
episode. The end-to-end report reuses ``render_contact_sheet``.
"""

from __future__ import annotations

import base64
import html
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from pipeline import memory
from pipeline.data import dataset, schema
from pipeline.data import manifest as mf
from pipeline.data.shards import decode_member, iter_shard
from pipeline.errors import SemoreError

DEFAULT_EPISODES = 2  # shown when none are requested
DEFAULT_MAX_STEPS = 50
# Episodes one page or sheet shows at most: each is a block of frames held in memory and
# embedded in one file.
MAX_SHOWN_EPISODES = 100
# Contact-sheet geometry: frames are upscaled (nearest) to at least MIN_TILE_PX wide so labels
# fit; columns fill at most SHEET_WIDTH_PX; each tile has a label strip of LABEL_PX below it.
MIN_TILE_PX = 96
SHEET_WIDTH_PX = 1680
LABEL_PX = 14
PAD_PX = 4


@dataclass
class StepView:
    """What the page shows of one step (frames stay PNG-encoded for embedding)."""

    key: str
    episode: int
    step: int
    frames: dict[str, bytes]  # member name (rgb.png, cam_<name>.png) -> PNG bytes
    action: np.ndarray
    reward: float
    state: dict
    info: dict  # step.json
    caption_sem: str | None = None
    caption_mot: str | None = None


@dataclass
class EpisodeView:
    episode: int
    shard: str
    num_steps: int  # steps in the whole episode (``steps`` may be cut at max_steps)
    episode_return: float
    steps: list[StepView]


def _format_ranges(values: list[int]) -> str:
    """``[0, 1, 2, 5]`` -> ``"0-2, 5"``."""
    parts, start = [], None
    for i, value in enumerate(values):
        if start is None:
            start = value
        if i + 1 == len(values) or values[i + 1] != value + 1:
            parts.append(str(start) if start == value else f"{start}-{value}")
            start = None
    return ", ".join(parts)


def _episode_shards(data_dir: Path, manifest: dict) -> dict[int, Path]:
    """Episode index -> the raw shard holding it (from the manifest, else from shard keys)."""
    shards = mf.section(manifest, "raw", data_dir).get("shards", {})
    where: dict[int, Path] = {}
    for path in dataset.completed_shards(data_dir, "raw"):
        episodes = shards[path.name].get("episodes")
        if episodes is None:
            episodes = {
                schema.parse_key(s["__key__"]).episode for s in iter_shard(path, decode=False)
            }
        where.update({episode: path for episode in episodes})
    return where


def read_episodes(
    data_dir: str | Path, episodes: list[int] | None = None, max_steps: int = DEFAULT_MAX_STEPS
) -> list[EpisodeView]:
    """The first ``max_steps`` steps of each requested episode (default: the first two)."""
    data_dir = Path(data_dir)
    manifest = mf.read_manifest(data_dir)
    where = _episode_shards(data_dir, manifest)
    available = sorted(where)
    episodes = available[:DEFAULT_EPISODES] if episodes is None else list(dict.fromkeys(episodes))
    unknown = [e for e in episodes if e not in where]
    if unknown:
        raise SemoreError(
            f"episode {unknown[0]} is not in {data_dir}: available episodes are {_format_ranges(available)}"
        )
    annotated = "ann" in manifest
    if annotated:  # captions are shown by key: a shard of other keys would show none
        dataset.check_annotations(data_dir, manifest)
    views: dict[int, EpisodeView] = {}
    for shard in sorted({where[e] for e in episodes}):
        wanted = {e for e in episodes if where[e] == shard}
        captions = _read_captions(data_dir, shard, wanted) if annotated else {}
        for sample in iter_shard(shard, decode=False):
            key = schema.parse_key(sample["__key__"])
            if key.episode > max(wanted):
                break  # episodes are stored in order: the rest of the shard is not wanted
            if key.episode not in wanted:
                continue
            view = views.setdefault(key.episode, EpisodeView(key.episode, shard.name, 0, 0.0, []))
            reward = float(decode_member(schema.REWARD, sample[schema.REWARD]))
            view.num_steps += 1
            view.episode_return += reward
            if len(view.steps) < max_steps:
                view.steps.append(_step_view(sample, key, reward, captions.get(sample["__key__"])))
    return [views[e] for e in episodes]


def _step_view(
    sample: dict, key: schema.SampleKey, reward: float, captions: tuple | None
) -> StepView:
    frames = {
        n: v
        for n, v in sample.items()
        if n == schema.RGB or (n.startswith(schema.CAMERA_PREFIX) and n.endswith(".png"))
    }
    return StepView(
        key=sample["__key__"],
        episode=key.episode,
        step=key.step,
        frames=dict(sorted(frames.items(), key=lambda item: item[0] != schema.RGB)),
        action=decode_member(schema.ACTION, sample[schema.ACTION]),
        reward=reward,
        state=decode_member(schema.STATE, sample[schema.STATE]),
        info=decode_member(schema.STEP, sample[schema.STEP]),
        caption_sem=captions[0] if captions else None,
        caption_mot=captions[1] if captions else None,
    )


def _read_captions(
    data_dir: Path, raw_shard: Path, episodes: set[int]
) -> dict[str, tuple[str, str]]:
    """Key -> (semantic, motion) caption from the annotation shard aligned with ``raw_shard``."""
    path = dataset.stage_dir(data_dir, "ann") / schema.shard_name(
        schema.ANN_PREFIX, schema.shard_index(raw_shard.name)
    )
    if not path.is_file():
        return {}
    return {
        sample["__key__"]: (
            sample[schema.CAPTION_SEM].decode(),
            sample[schema.CAPTION_MOT].decode(),
        )
        for sample in iter_shard(path, decode=False)
        if schema.parse_key(sample["__key__"]).episode in episodes
    }


def _fmt(value: object, unit: str = "", digits: int = 1) -> str:
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (int, float)):
        return f"{value:.{digits}f}{unit}"
    return str(value)


def _step_html(view: StepView, action_names: list[str]) -> str:
    e = html.escape
    figures = "".join(
        f'<figure><img src="data:image/png;base64,{base64.b64encode(png).decode()}" alt="{e(name)}">'
        f"<figcaption>{e(name.removesuffix('.png'))}</figcaption></figure>"
        for name, png in view.frames.items()
    )
    names = (
        action_names
        if len(action_names) == len(view.action)
        else [f"a{i}" for i in range(len(view.action))]
    )
    action = ", ".join(f"{n} {float(a):+.3f}" for n, a in zip(names, view.action, strict=True))
    flags = [f for f in ("is_first", "is_last", "is_terminal", "truncated") if view.info.get(f)]
    collision = view.state.get("collision", view.info.get("collision"))
    rows = [
        ("action", action),
        ("reward", f"{view.reward:+.4f}"),
        ("speed", _fmt(view.state.get("speed_mps"), " m/s")),
        ("lane", _fmt(view.state.get("lane_index"), digits=0)),
        ("lead distance", _fmt(schema.lead_distance_m(view.state), " m")),
        ("collision", _fmt(collision)),
        ("policy", _fmt(view.info.get("policy"))),
        ("flags", ", ".join(flags) or "-"),
    ]
    table = "".join(f"<tr><th>{e(k)}</th><td>{e(v)}</td></tr>" for k, v in rows)
    captions = ""
    if view.caption_sem is not None:
        captions = (
            f'<p class="caption sem"><b>semantic</b> {e(view.caption_sem)}</p>'
            f'<p class="caption mot"><b>motion</b> {e(view.caption_mot or "")}</p>'
        )
    hit = " collision" if collision else ""
    return (
        f'<div class="step{hit}" id="{e(view.key)}" data-key="{e(view.key)}" data-episode="{view.episode}" '
        f'data-step="{view.step}"><h3>step {view.step} <code>{e(view.key)}</code></h3>'
        f'<div class="frames">{figures}</div>{captions}<table class="values">{table}</table></div>'
    )


_CSS = """
body { font-family: sans-serif; margin: 1.5em; color: #222; }
table { border-collapse: collapse; } th, td { text-align: left; padding: 1px 8px; font-size: 0.9em; }
header table th { color: #555; }
.steps { display: flex; flex-wrap: wrap; gap: 10px; }
.step { border: 1px solid #ccc; border-radius: 4px; padding: 6px; width: 330px; }
.step.collision { border-color: #d33; background: #fff4f4; }
.step h3 { font-size: 0.95em; margin: 0 0 4px 0; } .step code { color: #777; font-size: 0.8em; }
.frames { display: flex; flex-wrap: wrap; gap: 4px; }
figure { margin: 0; } figcaption { font-size: 0.75em; color: #666; }
img { image-rendering: pixelated; min-width: 96px; max-width: 320px; }
.caption { margin: 3px 0; font-size: 0.85em; } .caption b { color: #357; }
"""


def html_page(data_dir: Path, manifest: dict, views: list[EpisodeView]) -> str:
    """The self-contained inspection page of ``views``."""
    e = html.escape
    raw, ann = manifest["raw"], manifest.get("ann")
    totals = raw.get("totals", {})
    header_rows = [
        ("folder", str(data_dir)),
        (
            "format / semore version",
            f"{manifest.get('format_version')} / {manifest.get('semore_version')}",
        ),
        ("simulator / scenario", f"{raw.get('backend', '?')} / {raw.get('scenario', '?')}"),
        ("run / seed", f"{raw.get('run', '?')} / {raw.get('seed', '?')}"),
        ("command", raw.get("command", "not recorded")),
        ("git revision", raw.get("git_revision") or "not recorded"),
        (
            "episodes / samples / shards",
            f"{totals.get('num_episodes', 0)} / {totals.get('num_samples', 0)} / {totals.get('num_shards', 0)}",
        ),
        (
            "annotations",
            f"{ann.get('captioner')} + {ann.get('text_encoder')} ({ann.get('embedding_dim')}-d)"
            if ann
            else "none",
        ),
    ]
    header = "".join(f"<tr><th>{e(k)}</th><td>{e(str(v))}</td></tr>" for k, v in header_rows)
    action_names = list(raw.get("action_names") or [])
    sections = []
    for view in views:
        steps = "".join(_step_html(step, action_names) for step in view.steps)
        shown = f"{len(view.steps)} of {view.num_steps} steps"
        sections.append(
            f'<section class="episode" id="episode-{view.episode}"><h2>Episode {view.episode} '
            f"<small>({e(view.shard)}, {shown}, return {view.episode_return:+.2f})</small></h2>"
            f'<div class="steps">{steps}</div></section>'
        )
    return (
        '<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>Semore dataset {e(data_dir.name)}</title><style>{_CSS}</style></head><body>"
        f"<header><h1>Semore dataset <code>{e(data_dir.name)}</code></h1><table>{header}</table></header>"
        + "".join(sections)
        + "</body></html>\n"
    )


def contact_sheet(views: list[EpisodeView]) -> Image.Image:
    """A grid of each step's main frame labelled ``e<episode> t<step> r<reward>``."""
    first = next((s for v in views for s in v.steps), None)
    if first is None:
        raise SemoreError("no steps to draw: expected at least one step in the selected episodes")
    frame_h, frame_w = _main_frame(first).shape[:2]
    scale = max(1, math.ceil(MIN_TILE_PX / frame_w))
    tile_w, tile_h = frame_w * scale, frame_h * scale
    columns = max(1, min(SHEET_WIDTH_PX // tile_w, max(len(v.steps) for v in views)))
    rows = sum(math.ceil(len(v.steps) / columns) for v in views)
    sheet_w = columns * tile_w + (columns + 1) * PAD_PX
    sheet_h = rows * (tile_h + LABEL_PX) + (rows + 1) * PAD_PX
    memory.check_fits(
        f"a contact sheet of {sum(len(v.steps) for v in views)} frames",
        {f"{sheet_w}x{sheet_h} RGB image": memory.frame_bytes(sheet_h, sheet_w)},
        "fewer --episodes or a smaller --max-steps",
    )
    sheet = Image.new("RGB", (sheet_w, sheet_h), "white")
    draw, font = ImageDraw.Draw(sheet), ImageFont.load_default()
    row = 0
    for view in views:
        for i, step in enumerate(view.steps):
            x = PAD_PX + (i % columns) * (tile_w + PAD_PX)
            y = PAD_PX + (row + i // columns) * (tile_h + LABEL_PX + PAD_PX)
            frame = Image.fromarray(_main_frame(step)).resize((tile_w, tile_h), Image.NEAREST)
            sheet.paste(frame, (x, y))
            mark = " C" if step.state.get("collision") else ""
            draw.text(
                (x, y + tile_h + 1),
                f"e{step.episode} t{step.step} r{step.reward:+.2f}{mark}",
                fill="black",
                font=font,
            )
        row += math.ceil(len(view.steps) / columns)
    return sheet


def _main_frame(step: StepView) -> np.ndarray:
    return decode_member(schema.RGB, next(iter(step.frames.values())))


def render_html(
    data_dir: str | Path,
    out_html: str | Path,
    episodes: list[int] | None = None,
    max_steps: int = DEFAULT_MAX_STEPS,
) -> Path:
    """Write the inspection page of ``episodes`` (default: the first two) to ``out_html``."""
    views = read_episodes(data_dir, episodes, max_steps)
    return write_html(Path(data_dir), views, Path(out_html))


def render_contact_sheet(
    data_dir: str | Path,
    out_png: str | Path,
    episodes: list[int] | None = None,
    max_steps: int = DEFAULT_MAX_STEPS,
) -> Path:
    """Write the contact sheet of ``episodes`` (default: the first two) to ``out_png``."""
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    contact_sheet(read_episodes(data_dir, episodes, max_steps)).save(out_png)
    return out_png


def write_html(data_dir: Path, views: list[EpisodeView], out_html: Path) -> Path:
    out_html.parent.mkdir(parents=True, exist_ok=True)
    out_html.write_text(html_page(data_dir, mf.read_manifest(data_dir), views), encoding="utf-8")
    return out_html
