"""An HTML page of a query and its neighbours, with every label of each as a picture: `audit query ... --html OUT`.

One self-contained file: every picture is an inline PNG (a `data:` URI), so the page can be mailed,
attached to an issue or opened from any folder. No scripts, no external fonts or styles.

    header     what was asked (key, image or text), the index (field, type, parameters, measured recall)
    table      rank, key, cosine, distance = 1 - cosine, caption; each key links to its section below
    sections   the query (its labels, the query image, or the text) and each neighbour: key, scores,
               caption, then one picture per tile of `render.sample_tiles`, the same tiles `audit show`
               draws, so a label looks the same in both; a clip store's sample is its clip panel
               (clip_panel.py, as `audit show` draws it), and a per-frame index names the best frame
"""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path

import numpy as np

from omnimill.audit.query import QueryResult
from omnimill.audit.render import DPI, FAILED_FACE, Tile, message_tile, sample_tiles, tile_png
from omnimill.store.labels import LabelStore

STYLE = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 24px; color: #263238; background: #fafafa; }
h1 { font-size: 20px; margin: 0 0 4px; } h2 { font-size: 16px; margin: 0 0 4px; }
.meta { color: #607d8b; margin: 0 0 16px; }
table { border-collapse: collapse; margin: 8px 0 24px; background: white; }
th, td { border-bottom: 1px solid #cfd8dc; padding: 4px 10px; text-align: left; vertical-align: top; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
section { background: white; border: 1px solid #cfd8dc; border-radius: 6px; padding: 12px; margin: 0 0 16px; }
section.query { border-color: #1e88e5; }
.caption { font-style: italic; color: #455a64; margin: 0 0 8px; }
.tiles { display: flex; flex-wrap: wrap; gap: 8px; }
figure { margin: 0; width: 240px; }
figure img { width: 240px; height: 240px; object-fit: contain; display: block; border: 1px solid #eceff1; }
figcaption { font-size: 12px; color: #546e7a; white-space: pre-line; }
blockquote { font-size: 18px; margin: 8px 0; }
code { background: #eceff1; padding: 0 3px; border-radius: 3px; }
img.panel { max-width: 100%; display: block; }
"""


def write_report(result: QueryResult, out: str | Path, labels: LabelStore | None = None) -> Path:
    """Write the page for `result` to `out` (parents created); returns its path."""
    out = Path(out)
    page = report_html(result, labels or LabelStore.open(result.store))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(page, encoding="utf-8")
    return out


def report_html(result: QueryResult, labels: LabelStore) -> str:
    info = result.info
    e = html.escape
    asked = {"key": f"sample <code>{e(result.value)}</code>", "image": f"image <code>{e(result.value)}</code>",
             "text": f"text “{e(result.value)}”", "audio": f"audio <code>{e(result.value)}</code>"}[result.kind]
    measured = info.get("measured", {})
    params = ", ".join(f"{k} = {v}" for k, v in info.get("params", {}).items()) or "exact search"
    meta = (f"index <code>{e(str(info.get('path', '')))}</code> of <code>{e(info['field'])}</code> over "
            f"{info['n']:,} samples of <code>{e(result.store)}</code> · {e(info['factory'])} ({e(params)}) · "
            f"recall@{measured.get('k', 10)} {measured.get('recall@10', float('nan')):.3f} vs exact · "
            "cosine similarity on L2-normalised vectors; distance = 1 − cosine")
    parts = ["<!doctype html><html lang='en'><head><meta charset='utf-8'>",
             f"<title>omnimill audit · neighbours of {e(result.value)}</title><style>{STYLE}</style></head><body>",
             f"<h1>Neighbours of {asked}</h1><p class='meta'>{meta}</p>", _table(result),
             _query_section(result, labels)]
    for n in result.neighbours:
        at = f" · best frame {n.frame} at {n.time:.2f} s" if n.frame is not None else ""
        heading = (f"#{n.rank} · <code>{e(n.key)}</code>{at} · cosine {n.score:.4f} · distance {n.distance:.4f}")
        parts.append(_section(f"n{n.rank}", heading, n.caption, _tiles(labels, n.index)))
    parts.append("</body></html>\n")
    return "\n".join(parts)


def _table(result: QueryResult) -> str:
    e = html.escape
    rows = "".join(f"<tr><td class='num'>{n.rank}</td><td><a href='#n{n.rank}'>{e(n.key)}</a></td>"
                   f"<td class='num'>{n.score:.4f}</td><td class='num'>{n.distance:.4f}</td>"
                   f"<td>{e(n.caption)}</td></tr>" for n in result.neighbours)
    if not rows:
        rows = "<tr><td colspan='5'>no neighbours: the index holds no other sample</td></tr>"
    return ("<table><thead><tr><th>rank</th><th>key</th><th>cosine</th><th>distance</th><th>caption</th></tr>"
            f"</thead><tbody>{rows}</tbody></table>")


def _query_section(result: QueryResult, labels: LabelStore) -> str:
    e = html.escape
    if result.kind == "key":
        from omnimill.audit.query import caption_of

        return _section("query", f"query · <code>{e(result.value)}</code>", caption_of(labels, result.index),
                        _tiles(labels, result.index), css="query")
    if result.kind == "image":
        figure = _figure(_png(result.view), f"canonical view of {Path(result.value).name}")
        return _section("query", f"query · image <code>{e(result.value)}</code>", "", figure, css="query")
    if result.kind == "audio":
        return _section("query", f"query · audio <code>{e(result.value)}</code>", "", "", css="query")
    return _section("query", "query · text", "", f"<blockquote>“{e(result.value)}”</blockquote>", css="query")


def _section(anchor: str, heading: str, caption: str, body: str, css: str = "") -> str:
    caption = f"<p class='caption'>“{html.escape(caption)}”</p>" if caption else ""
    return f"<section id='{anchor}' class='{css}'><h2>{heading}</h2>{caption}<div class='tiles'>{body}</div></section>"


def _tiles(labels: LabelStore, i: int) -> str:
    if labels.kind.frames_per_sample != 1:  # a clip: its panel (`audit show`), one wide picture
        return _clip_panel(labels, i)
    return "".join(_figure(_tile_png(tile), tile.title) for tile in sample_tiles(labels, i))


def _clip_panel(labels: LabelStore, i: int) -> str:
    from omnimill.audit.clip_panel import ClipLabels, clip_figure

    clip = ClipLabels.read(labels, i)
    buffer = io.BytesIO()
    clip_figure(clip).savefig(buffer, format="png", dpi=DPI, facecolor="white")
    data = base64.b64encode(buffer.getvalue()).decode("ascii")
    title = html.escape(f"{clip.key}: every label of the clip (omnimill audit report draws it as a page)")
    return f"<img class='panel' alt='{title}' src='data:image/png;base64,{data}'>"


def _tile_png(tile: Tile) -> bytes:
    """The tile's picture; a label that cannot be drawn gets a tile saying why, not a broken page."""
    try:
        return tile_png(tile)
    except Exception as error:  # one odd label must not lose the whole report
        reason = f"could not draw:\n{type(error).__name__}: {str(error)[:80]}"
        return tile_png(message_tile(tile.title, reason, FAILED_FACE, color="#b71c1c"))


def _figure(picture: bytes, title: str, kind: str = "png") -> str:
    """A <figure> of one picture (its bytes as a data: URI of type image/`kind`: png, jpeg) and its title."""
    data = base64.b64encode(picture).decode("ascii")
    title = html.escape(title)
    return f"<figure><img alt='{title}' src='data:image/{kind};base64,{data}'><figcaption>{title}</figcaption></figure>"


def _png(image: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.asarray(image, np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()
