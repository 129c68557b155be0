"""One sample with every label it carries, as one PNG panel: `omnimill audit show STORE KEY` (a clip store's
clip: audit/clip_panel.py, which lays out these tiles frame by frame beside the clip's audio).

    store ──index_of(key)──▶ i ──▶ per teacher: fields[i], ok[i], marker of unit i // unit_size
                                    └──▶ tiles (the teacher's declared picture, else by field kind
                                         and shape) ──▶ PNG

A renderer maps one teacher's fields of one sample to a list of tiles; a tile is a title and a
function that draws on one matplotlib Axes. A teacher declares its picture (`Teacher.renderer`): the
name of one in RENDERERS, whose order is the order teachers are shown in, or a function of its own (a
plug-in's; shown after omnimill's). The teacher's class is found from the store's provenance by
registry.stored_teacher, which never imports what a store names unless the user trusts it. Teachers
without a picture get tiles by each field's kind where the kind says more than the shape (binary maps,
unit vectors, class and instance maps: see KIND_TILES), else by its per-sample shape:

  ()                   scalars (numbers and strings)  -> one text table per teacher
  (n,)                 vector                         -> bar plot (n <= 32) or line plot
  (H, W)               2-D map                        -> imshow with a colormap and colour bar
  (H, W, 3) uint8      picture                        -> imshow
  (H, W, C) other      feature grid                   -> PCA to 3 components -> RGB

omnimill's teachers have their own pictures (rgb, canny, dinov2 as a PCA picture, palette swatches,
metadata table, SAM instances over the view, depth colour map, normals as RGB, segmentation classes
over the view with a legend, detection boxes, pose skeletons, CLIP/ImageBind patches and embeddings,
generated captions), and with a view canny's edges are also drawn over it: the quickest check that
dense labels line up with the picture. Overlays use the canonical view when the store has one (a field
of kind image at the view's size, the rgb teacher's; stores without kinds: rgb/image), else a grey
canvas. A renderer whose fields are not all there (a teacher renamed a field)
falls back to the generic tiles; fields a renderer does not draw get generic tiles after its own.
A teacher that failed on the sample gets a tile with the reason from its unit marker; teachers that
failed alike (a broken file) share one.

Only matplotlib's object API is used (`Figure` + Agg canvas), never pyplot: rendering leaves no
global figure state behind, so a long-running auditor or a test can call it any number of times.
"""

from __future__ import annotations

import textwrap
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from omnimill.labelers.schema import COCO_SKELETON, KEYPOINT_THRESHOLD
from omnimill.store.labels import LabelStore

TILE_INCHES = 3.0  # each tile is 3 x 3 in at 100 dpi = 300 x 300 px
DPI = 100
MAX_COLUMNS = 4  # at most 4 x 300 = 1200 px wide
MIN_WIDTH_INCHES = 6.0
ROW_HEIGHT = 0.075  # of a tile, per row of a text table: 13 rows = 0.975
FAILED_FACE = "#fbe9e7"  # light red behind "failed" tiles
MISSING_FACE = "#eceff1"  # light grey behind "not labelled" / "no rgb teacher" tiles
NOT_LABELLED = "not labelled yet:\nits unit has no commit marker\n(run `omnimill label` again)"
EDGE_COLOR = (0, 255, 255)  # cyan edges on the dimmed view
OVERLAY_ALPHA = 0.65  # label colours over the view: the colours read clearly, the picture still shows
MIN_KEYPOINT_SCORE = KEYPOINT_THRESHOLD  # pose joints below this heatmap score are not drawn
LEGEND_CLASSES = 6  # segmentation legend: the largest classes of the sample

Draw = Callable  # (matplotlib Axes) -> None


@dataclass
class Tile:
    title: str
    draw: Draw
    text: str = ""  # what a message tile says ("failed ...", "not labelled yet ..."), for tests and reports


@dataclass
class Sample:
    """What renderers may know besides their own fields."""

    key: str
    index: int
    view_size: int
    provenance: dict  # of the teacher being rendered
    view: np.ndarray | None = None  # the rgb teacher's view of this sample, for overlays (None: no rgb)


# ---------------------------------------------------------------------------- entry point
def render_sample(store: str, key: str, out: Path | str) -> Path:
    """Write one PNG panel of every label sample `key` carries; returns its path.

    A clip store's sample gets the clip panel (audit/clip_panel.py: frame strip, per-frame labels, waveform,
    spectrogram, time segments, transcripts). An unknown key raises UserError (from `LabelStore.index_of`).
    """
    labels = LabelStore.open(str(store))
    if labels.kind.frames_per_sample != 1:
        from omnimill.audit.clip_panel import render_clip  # it draws with this module's tiles

        return render_clip(labels, key, out)
    i = labels.index_of(key)
    figure = panel(sample_tiles(labels, i), _suptitle(labels, i, key))
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, dpi=DPI, facecolor="white")
    return out


def sample_tiles(labels: LabelStore, i: int) -> list[Tile]:
    """The tiles of sample `i`: teachers in the order of their pictures (ORDER), then others by name, then
    failures."""
    teachers = sorted(labels.teachers(), key=lambda t: _rank(t, labels.provenance(t)))
    tiles: list[Tile] = []
    failures: dict[str, list[str]] = {}  # reason -> teachers that failed with it (a bad file fails them all)
    view = None
    key = str(labels.read("keys", i))
    for teacher in teachers:
        if bool(labels.ok(teacher, i)):
            provenance = labels.provenance(teacher)
            fields = {name: _scalar_or_array(labels.read(f"{teacher}/{name}", i))
                      for name in _field_names(labels.arrays(teacher), provenance)}
            sample = Sample(key, i, labels.view_size, provenance, view)
            tiles += teacher_tiles(teacher, fields, sample)
            if view is None:
                view = _view(teacher, fields, provenance, labels.view_size)
        else:
            failures.setdefault(_failure_reason(labels, teacher, i), []).append(teacher)
    if not any(_view_field(t, labels.provenance(t), labels.view_size) for t in teachers):
        tiles.insert(0, message_tile("canonical view", "this store has no rgb teacher:\nlabel it with "
                                     "--teacher rgb\nto see what the teachers saw", MISSING_FACE))
    for reason, names in failures.items():
        tiles.append(_failure_tile(names, reason))
    if not tiles:
        tiles.append(message_tile("no labels", "this store has no teachers yet", MISSING_FACE))
    return tiles


def teacher_tiles(teacher: str, fields: dict, sample: Sample) -> list[Tile]:
    """One teacher's tiles: its declared picture (its class found from `sample.provenance`), else by kind."""
    return renderer_for(teacher, sample.provenance)(teacher, fields, sample)


def renderer_for(teacher: str, provenance: dict) -> Callable:
    """What draws a teacher: its class's `renderer` (a RENDERERS name, or a plug-in's function), else
    tiles by field kind and shape (also for a teacher whose class may not be imported)."""
    declared = _declared(teacher, provenance)
    if callable(declared):
        return declared
    return RENDERERS.get(declared, by_kind) if isinstance(declared, str) else by_kind


def _declared(teacher: str, provenance: dict):
    from omnimill.labelers.registry import stored_teacher

    cls = stored_teacher(teacher, provenance)
    return getattr(cls, "renderer", None)


def _rank(teacher: str, provenance: dict) -> tuple:
    declared = _declared(teacher, provenance)
    return (ORDER.index(declared) if isinstance(declared, str) and declared in ORDER else len(ORDER), teacher)


def _view_field(teacher: str, provenance: dict, view_size: int) -> str | None:
    """The teacher's field holding the canonical view: of kind image at the view's size; for stores made
    before kinds, the rgb teacher's image."""
    for name, spec in (provenance.get("fields") or {}).items():
        if spec.get("kind") == "image" and list(spec.get("shape", ())) == [view_size, view_size, 3]:
            return name
    if teacher == "rgb" and "image" in (provenance.get("fields") or {}) and not any(
            spec.get("kind") for spec in provenance["fields"].values()):
        return "image"
    return None


def _view(teacher: str, fields: dict, provenance: dict, view_size: int) -> np.ndarray | None:
    name = _view_field(teacher, provenance, view_size)
    value = fields.get(name) if name else None
    return value if isinstance(value, np.ndarray) else None


def panel(tiles: list[Tile], title: str) -> Figure:
    """Tiles laid out in rows of at most MAX_COLUMNS under a title: one figure (Agg canvas, no pyplot)."""
    rows = -(-len(tiles) // MAX_COLUMNS)  # ceil: 5 tiles -> 2 rows
    columns = -(-len(tiles) // rows)  # as few empty places as that allows: 5 tiles -> 3 columns
    title_lines = title.count("\n") + 1
    width = max(TILE_INCHES * columns, MIN_WIDTH_INCHES)  # room for the title over a lone failure tile
    figure = Figure(figsize=(width, TILE_INCHES * rows + 0.25 * title_lines), layout="constrained")
    FigureCanvasAgg(figure)
    figure.suptitle(title, fontsize=11, ha="center")
    for n, tile in enumerate(tiles):
        ax = figure.add_subplot(rows, columns, n + 1)
        tile.draw(ax)
        ax.set_title(tile.title, fontsize=9)
    return figure


def tile_png(tile: Tile, inches: float = TILE_INCHES * 0.8, dpi: int = DPI) -> bytes:
    """One tile as a PNG of its own (HTML reports lay tiles out themselves); drawn as in the panel."""
    import io

    figure = Figure(figsize=(inches, inches), layout="constrained")
    FigureCanvasAgg(figure)
    ax = figure.add_subplot(1, 1, 1)
    tile.draw(ax)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=dpi, facecolor="white")
    return buffer.getvalue()


def _suptitle(labels: LabelStore, i: int, key: str) -> str:
    caption = str(labels.read("caption", i))
    box = [int(v) for v in labels.crop_boxes(i)] if labels.has("crop_box") else [0]
    if any(box):
        x0, y0, x1, y1 = box
        crop = (f"view = crop ({x0}, {y0})–({x1}, {y1}) of the {_original_size(labels, i)}original, "
                f"{x1 - x0}px square → {labels.view_size}px")
    else:
        crop = "no crop box (sample was never decoded)"
    source = str(labels.read("source", i))
    source = source if len(source) <= 70 else "…" + source[-69:]
    lines = [f"{key}   (index {i} of {labels.n})   {source}", crop]
    if caption:
        lines.insert(1, "“" + textwrap.shorten(caption, 110, placeholder=" …") + "”")
    return "\n".join(lines)


def _original_size(labels: LabelStore, i: int) -> str:
    """"96×72 " when the metadata teacher measured the original, else ""."""
    if "metadata" not in labels.teachers() or not bool(labels.ok("metadata", i)):
        return ""
    return f"{int(labels.read('metadata/orig_width', i))}×{int(labels.read('metadata/orig_height', i))} "


def _failure_reason(labels: LabelStore, teacher: str, i: int) -> str:
    marker = labels.markers(teacher)[i // labels.unit_size]
    if marker is None:
        return NOT_LABELLED
    for error in marker.get("errors", []):
        if error["index"] == i:
            return f"{error['stage']}: {error['error']}"
    return "failed (no error recorded in the unit marker)"


def _failure_tile(teachers: list[str], reason: str) -> Tile:
    if reason == NOT_LABELLED:
        return message_tile(", ".join(teachers), reason, MISSING_FACE)
    wrapped = "\n".join(textwrap.fill(line, 38) for line in reason.splitlines())
    return message_tile(", ".join(teachers), "failed\n\n" + wrapped, FAILED_FACE, color="#b71c1c")


def message_tile(title: str, text: str, face: str = MISSING_FACE, color: str = "#37474f") -> Tile:
    """A tile that says something instead of drawing a label (failed, not labelled, nothing to show)."""
    def draw(ax):
        ax.set_facecolor(face)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.text(0.5, 0.5, text, ha="center", va="center", fontsize=9, color=color, transform=ax.transAxes)
    return Tile(title, draw, text)


def _field_names(arrays: list[str], provenance: dict) -> list[str]:
    """The teacher's fields in the order it declared them (provenance), then any others by name."""
    stored = set(arrays) - {"ok"}
    declared = [name for name in provenance.get("fields", {}) if name in stored]
    return declared + sorted(stored - set(declared))


def _scalar_or_array(value):
    """Zarr gives 0-d arrays for scalar fields: unwrap them (str fields to str)."""
    value = np.asarray(value)
    if value.ndim == 0:
        return str(value) if value.dtype.kind in "OTUS" else value.item()
    return value


# ---------------------------------------------------------------------------- known teachers
def _rgb(teacher, fields, sample):
    image = fields["image"]
    return [Tile(f"rgb · canonical view {image.shape[0]}px", lambda ax: _show(ax, image))]


def _canny(teacher, fields, sample):
    edges = fields["edges"]
    share = 100.0 * float(np.mean(edges))
    tiles = [Tile(f"canny · edges ({share:.1f}% of pixels)", lambda ax: _show(ax, edges, cmap="gray"))]
    return tiles + (_edges_over_view(sample.view, edges) if sample.view is not None else [])


def _edges_over_view(view: np.ndarray, edges: np.ndarray) -> list[Tile]:
    """Canny edges drawn on the dimmed view: dense labels should hug the picture (spatial alignment)."""
    if edges.shape != view.shape[:2]:
        return []
    overlay = (view * 0.55).astype(np.uint8)
    overlay[edges] = EDGE_COLOR
    return [Tile("canny over rgb · alignment check", lambda ax: _show(ax, overlay))]


def _dinov2(teacher, fields, sample):
    patches, cls = fields["patches"], fields["cls"]
    g, _, d = patches.shape
    checkpoint = Path(str(sample.provenance.get("checkpoint") or "")).name
    title = f"dinov2 · {g}×{g}×{d} patches, PCA→RGB\n|cls| = {np.linalg.norm(cls):.2f}" + \
        (f"  ({checkpoint})" if checkpoint else "")
    return [Tile(title, lambda ax: _show(ax, pca_rgb(patches), interpolation="nearest"))]


def _palette(teacher, fields, sample):
    n = int(fields["count"])
    colors, weights = fields["colors"][:n], fields["weights"][:n]

    def draw(ax):
        rows = np.arange(n)
        ax.barh(rows, weights, color=colors / 255.0, edgecolor="#90a4ae", height=0.8)
        ax.set_yticks(rows, [f"#{r:02x}{g:02x}{b:02x}" for r, g, b in colors], fontsize=8, family="monospace")
        ax.invert_yaxis()  # most frequent on top
        for row, w in zip(rows, weights):
            ax.text(w, row, f" {100 * w:.0f}%", va="center", fontsize=8)
        ax.set_xlim(0, max(1e-6, float(weights.max(initial=0))) * 1.3)
        ax.set_xticks([])
        for side in ("top", "right", "bottom"):
            ax.spines[side].set_visible(False)
    return [Tile(f"palette · {n} colours by pixel share", draw)]


def _metadata(teacher, fields, sample):
    return [Tile("metadata", lambda ax: _table(ax, fields))]


# ---------------------------------------------------------------------------- teachers of the zoo
def _renders(needs: tuple[str, ...], uses: tuple[str, ...] = ()):
    """A renderer for fields `needs` (+ optional `uses`): generic tiles when one is missing, and for the rest."""
    def wrap(renderer):
        def checked(teacher, fields, sample):
            if any(name not in fields for name in needs):
                return generic(teacher, fields, sample)
            rest = {k: v for k, v in fields.items() if k not in needs and k not in uses}
            return renderer(teacher, fields, sample) + (generic(teacher, rest, sample) if rest else [])
        checked.__name__ = renderer.__name__
        return checked
    return wrap


def colors_for(ids: np.ndarray) -> np.ndarray:
    """A fixed, well-spread colour per integer id (golden-ratio hues): (n, 3) floats in 0..1."""
    from matplotlib.colors import hsv_to_rgb

    ids = np.asarray(ids, np.float64)
    hue = (ids * 0.618033988749895) % 1.0
    saturation = 0.55 + 0.4 * ((ids * 0.377) % 1.0)
    return hsv_to_rgb(np.stack([hue, saturation, np.full_like(hue, 0.95)], -1))


def _canvas(sample: Sample, shape: tuple[int, int]) -> np.ndarray:
    """The view as floats 0..1 when it matches `shape`, else a mid-grey canvas of that size."""
    if sample.view is not None and sample.view.shape[:2] == tuple(shape):
        return sample.view.astype(np.float32) / 255.0
    return np.full((*shape, 3), 0.5, np.float32)


def colour_ids(ids: np.ndarray, sample: Sample, background: int | None = 0) -> np.ndarray:
    """An id map painted over the view: each id its colour, `background` ids left as the view."""
    base = _canvas(sample, ids.shape)
    values, inverse = np.unique(ids, return_inverse=True)
    painted = colors_for(values)[inverse.reshape(ids.shape)]
    out = (1 - OVERLAY_ALPHA) * base + OVERLAY_ALPHA * painted
    if background is not None:
        out[ids == background] = base[ids == background]
    return np.clip(out, 0, 1)


@_renders(needs=("instances",), uses=("boxes", "scores", "areas", "count", "edges", "masks64"))
def _sam(teacher, fields, sample):
    instances = fields["instances"]
    count = int(fields.get("count", len(np.unique(instances)) - 1))
    picture = colour_ids(instances, sample)
    edges = fields.get("edges")
    if isinstance(edges, np.ndarray) and edges.shape == instances.shape:
        picture[edges] = 1.0  # white boundaries between instances
    scores = fields.get("scores")
    best = f", best IoU {float(scores[0]):.2f}" if isinstance(scores, np.ndarray) and count else ""
    tiles = [Tile(f"sam · {count} instances{best}", lambda ax: _show(ax, picture, interpolation="nearest"))]
    if isinstance(edges, np.ndarray):
        tiles.append(Tile(f"sam · edges ({100.0 * float(np.mean(edges)):.1f}% of pixels)",
                          lambda ax: _show(ax, edges, cmap="gray")))
    masks, boxes = fields.get("masks64"), fields.get("boxes")
    if isinstance(masks, np.ndarray) and isinstance(boxes, np.ndarray) and masks.ndim == 3:
        outlines = instance_outlines(masks[:count], boxes[:count], instances.shape, sample)
        tiles.append(Tile(f"sam · every instance's outline ({count}, overlaps kept)",
                          lambda ax: _show(ax, outlines, interpolation="nearest")))
    return tiles


def instance_outlines(masks: np.ndarray, boxes: np.ndarray, shape: tuple[int, int], sample: Sample) -> np.ndarray:
    """Each instance's own mask (masks64 pasted into its box) drawn as an outline in its colour over the
    dimmed view, largest first: where instances overlap, every outline still shows."""
    from omnimill.labelers.sam import paste_in_boxes

    picture = 0.5 * _canvas(sample, shape)
    pasted = paste_in_boxes(masks, boxes, *shape)
    colours = colors_for(np.arange(1, len(pasted) + 1))
    for j in np.argsort(-pasted.sum((1, 2)), kind="stable"):
        inner = pasted[j].copy()  # a pixel is inside when it and its 4 neighbours are in the mask
        inner[1:] &= pasted[j][:-1]
        inner[:-1] &= pasted[j][1:]
        inner[:, 1:] &= pasted[j][:, :-1]
        inner[:, :-1] &= pasted[j][:, 1:]
        picture[pasted[j] & ~inner] = colours[j]
    return picture


def _depth(teacher, fields, sample):
    name = "disparity" if isinstance(fields.get("disparity"), np.ndarray) else \
        "depth" if isinstance(fields.get("depth"), np.ndarray) else None
    if name is None or fields[name].ndim != 2:
        return generic(teacher, fields, sample)
    value = fields[name].astype(np.float32)
    if name == "disparity":  # larger = nearer; bright = near either way
        title, cmap, unit = "depth · relative inverse depth (bright = near)", "inferno", "disparity (no unit)"
    else:
        title, cmap, unit = "depth · metres (bright = near)", "inferno_r", "m"

    def draw(ax):
        shown = ax.imshow(value, cmap=cmap)
        ax.set_xticks([])
        ax.set_yticks([])
        bar = ax.figure.colorbar(shown, ax=ax, fraction=0.046, pad=0.02)
        bar.set_label(unit, fontsize=7)
        bar.ax.tick_params(labelsize=7)
    rest = {k: v for k, v in fields.items() if k != name}
    return [Tile(title, draw)] + (generic(teacher, rest, sample) if rest else [])


@_renders(needs=("normals",))
def _normals(teacher, fields, sample):
    normals = fields["normals"].astype(np.float32)
    if normals.ndim != 3 or normals.shape[-1] != 3:
        return generic(teacher, fields, sample)
    picture = np.clip((normals + 1) / 2, 0, 1)
    return [Tile("normals · RGB = (n + 1) / 2", lambda ax: _show(ax, picture))]


def _class_names(sample: Sample, key: str) -> dict[int, str]:
    """Class names from the teacher's provenance: a list (semseg class_names) or a dict (id2label)."""
    config = sample.provenance.get("config") or {}
    names = config.get(key, sample.provenance.get(key))
    if isinstance(names, dict):
        return {int(i): str(n) for i, n in names.items()}
    if isinstance(names, list):
        return dict(enumerate(map(str, names)))
    return {}


@_renders(needs=("classes",))
def _semseg(teacher, fields, sample):
    classes = fields["classes"]
    if classes.ndim != 2:
        return generic(teacher, fields, sample)
    from matplotlib.patches import Patch

    names = _class_names(sample, "class_names")
    values, areas = np.unique(classes, return_counts=True)
    top = values[np.argsort(-areas)][:LEGEND_CLASSES]
    picture = colour_ids(classes, sample, background=None)

    def draw(ax):
        _show(ax, picture, interpolation="nearest")
        share = {v: a / classes.size for v, a in zip(values, areas)}
        handles = [Patch(color=colors_for([v])[0], label=f"{names.get(int(v), int(v))} {100 * share[v]:.0f}%")
                   for v in top]
        ax.legend(handles=handles, loc="lower left", fontsize=6, framealpha=0.8, handlelength=1, borderpad=0.3)
    return [Tile(f"semseg · {len(values)} classes (largest in legend)", draw)]


def _draw_boxes(ax, boxes: np.ndarray, labels: list[str], colors: np.ndarray, dashed: bool = False):
    from matplotlib.patches import Rectangle

    for (x0, y0, x1, y1), text, color in zip(boxes, labels, colors):
        ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, edgecolor=color, linewidth=1.2,
                               linestyle="--" if dashed else "-"))
        if text:
            ax.text(x0, y0, text, fontsize=6, color="black", va="bottom",
                    bbox={"facecolor": color, "edgecolor": "none", "pad": 1, "alpha": 0.85})


@_renders(needs=("boxes", "classes", "count"), uses=("scores", "person_class"))
def _detection(teacher, fields, sample):
    n = int(fields["count"])
    boxes, classes = fields["boxes"][:n], fields["classes"][:n]
    scores = fields["scores"][:n] if isinstance(fields.get("scores"), np.ndarray) else np.ones(n)
    names = _class_names(sample, "id2label")
    labels = [f"{names.get(int(c), int(c))} {s:.2f}" for c, s in zip(classes, scores)]
    base = _canvas(sample, (sample.view_size, sample.view_size))

    def draw(ax):
        _show(ax, base)
        _draw_boxes(ax, boxes, labels, colors_for(classes))
    return [Tile(f"detection · {n} boxes", draw)]


@_renders(needs=("keypoints", "count"), uses=("keypoint_scores", "boxes"))
def _pose(teacher, fields, sample):
    n = int(fields["count"])
    keypoints = fields["keypoints"][:n]
    scores = fields["keypoint_scores"][:n] if isinstance(fields.get("keypoint_scores"), np.ndarray) \
        else np.ones(keypoints.shape[:2])
    boxes = fields["boxes"][:n] if isinstance(fields.get("boxes"), np.ndarray) else np.zeros((0, 4))
    base = _canvas(sample, (sample.view_size, sample.view_size))
    colors = colors_for(np.arange(n))

    def draw(ax):
        _show(ax, base)
        _draw_boxes(ax, boxes, [""] * len(boxes), colors, dashed=True)
        for person, (points, score) in enumerate(zip(keypoints, scores)):
            seen = score >= MIN_KEYPOINT_SCORE
            for a, b in COCO_SKELETON:
                if a < len(points) and b < len(points) and seen[a] and seen[b]:
                    ax.plot(*zip(points[a], points[b]), color=colors[person], linewidth=1.5)
            ax.scatter(points[seen, 0], points[seen, 1], s=6, color="white", edgecolors=colors[person],
                       linewidths=0.8, zorder=3)
        ax.set_xlim(0, sample.view_size)
        ax.set_ylim(sample.view_size, 0)
    return [Tile(f"pose · {n} people (joints with score ≥ {MIN_KEYPOINT_SCORE})", draw)]


def _joint_embedding(teacher, fields, sample):
    """CLIP / ImageBind: patch PCA picture, image embedding, and how close the caption's embedding is."""
    tiles = []
    patches = fields.get("patches")
    if isinstance(patches, np.ndarray) and patches.ndim == 3:
        g, _, d = patches.shape
        tiles.append(Tile(f"{teacher} · {g}×{g}×{d} patches, PCA→RGB",
                          lambda ax: _show(ax, pca_rgb(patches), interpolation="nearest")))
    embedding = fields.get("embedding")
    if isinstance(embedding, np.ndarray) and embedding.ndim == 1:
        text = fields.get("text_embedding")
        note = "no caption"
        if fields.get("has_text") and isinstance(text, np.ndarray):
            cosine = float(embedding @ text) / max(1e-12, float(np.linalg.norm(embedding) * np.linalg.norm(text)))
            note = f"cos(image, caption) = {cosine:.3f}"
        tiles.append(Tile(f"{teacher} · embedding ({len(embedding)})\n{note}", lambda ax: _vector(ax, embedding)))
    rest = {k: v for k, v in fields.items() if k not in ("patches", "embedding", "text_embedding", "has_text")}
    if not tiles:
        return generic(teacher, fields, sample)
    return tiles + (generic(teacher, rest, sample) if rest else [])


@_renders(needs=("captions",), uses=("count",))
def _caption(teacher, fields, sample):
    captions = [str(c) for c in np.asarray(fields["captions"]).ravel() if str(c)]
    text = "\n\n".join(textwrap.fill(f"{n + 1}. {c}", 36) for n, c in enumerate(captions)) or "(no caption)"
    return [text_tile(f"{teacher} · {len(captions)} generated", text)]


def text_tile(title: str, text: str) -> Tile:
    """A tile of wrapped text, top left (captions)."""
    def draw(ax):
        ax.axis("off")
        ax.text(0.02, 0.98, text, ha="left", va="top", fontsize=8, wrap=True, transform=ax.transAxes)
    return Tile(title, draw, text)


def _caption_embed(teacher, fields, sample):
    embedding = fields.get("embedding")
    if not isinstance(embedding, np.ndarray) or embedding.ndim != 1:
        return generic(teacher, fields, sample)
    if "has_text" in fields and not fields["has_text"]:
        return [message_tile(f"{teacher} · embedding", "no caption:\nnothing was embedded", MISSING_FACE)]
    rest = {k: v for k, v in fields.items() if k not in ("embedding", "has_text")}
    return [Tile(f"{teacher} · caption embedding ({len(embedding)})", lambda ax: _vector(ax, embedding))] + \
        (generic(teacher, rest, sample) if rest else [])


def _by_shape(teacher, fields, sample):
    return generic(teacher, fields, sample)


# Pictures by the name a teacher declares (Teacher.renderer); their order is the order teachers are shown in.
RENDERERS = {"rgb": _rgb, "canny": _canny, "sam": _sam, "depth": _depth, "normals": _normals, "semseg": _semseg,
             "detection": _detection, "pose": _pose, "dinov2": _dinov2, "clip": _joint_embedding,
             "imagebind": _joint_embedding, "palette": _palette, "captioner": _caption,
             "caption_embed": _caption_embed, "captioner_embed": _by_shape, "t5_embed": _by_shape, "metadata": _metadata}
ORDER = tuple(RENDERERS)


# ---------------------------------------------------------------------------- by field kind
def _binary_tile(teacher, name, value, sample):
    share = 100.0 * float(np.mean(value))
    return Tile(f"{teacher}/{name} · {share:.1f}% of pixels", lambda ax: _show(ax, value, cmap="gray"))


def _unit_vectors_tile(teacher, name, value, sample):
    picture = np.clip((value.astype(np.float32) + 1) / 2, 0, 1)
    return Tile(f"{teacher}/{name} · RGB = (n + 1) / 2", lambda ax: _show(ax, picture))


def _ids_tile(teacher, name, value, sample):
    picture = colour_ids(value, sample, background=0 if value.min(initial=0) >= 0 else None)
    return Tile(f"{teacher}/{name} · {len(np.unique(value))} ids", lambda ax: _show(ax, picture, interpolation="nearest"))


# kind -> (per-sample dimensions it draws, tile maker); other kinds and shapes get generic's tiles
KIND_TILES = {"binary": (2, _binary_tile), "unit_vectors": (3, _unit_vectors_tile), "classes": (2, _ids_tile),
              "instances": (2, _ids_tile)}


def by_kind(teacher: str, fields: dict, sample: Sample) -> list[Tile]:
    """Tiles for a teacher without a picture: by each field's kind (provenance) where KIND_TILES has one,
    the rest by shape (generic)."""
    specs = sample.provenance.get("fields") or {}
    tiles, scalars = [], {}
    for name, value in fields.items():
        ndim, make = KIND_TILES.get(specs.get(name, {}).get("kind"), (None, None))
        if not isinstance(value, np.ndarray):
            scalars[name] = value  # one table for all of them, last, as generic draws them
        elif make is not None and value.ndim == ndim:
            tiles.append(make(teacher, name, value, sample))
        else:
            tiles += generic(teacher, {name: value}, sample)
    return tiles + (generic(teacher, scalars, sample) if scalars else [])


# ---------------------------------------------------------------------------- any other teacher
def generic(teacher: str, fields: dict, sample: Sample) -> list[Tile]:
    """Tiles for a teacher without a renderer, chosen by each field's per-sample shape."""
    tiles = []
    scalars = {name: v for name, v in fields.items() if not isinstance(v, np.ndarray)}
    for name, value in fields.items():
        if name in scalars:
            continue
        title = f"{teacher}/{name} · {'×'.join(map(str, value.shape))} {value.dtype}"
        if value.ndim == 1:
            title += f"\n‖v‖ = {np.linalg.norm(value.astype(np.float64)):.3g}"
        tiles.append(Tile(title, _generic_draw(value)))
    if scalars:
        tiles.append(Tile(teacher, lambda ax: _table(ax, scalars)))
    return tiles


def _generic_draw(value: np.ndarray) -> Draw:
    if value.ndim == 1:
        return lambda ax: _vector(ax, value)
    if value.ndim == 2:
        return lambda ax: _show(ax, value.astype(np.float32), cmap="viridis", colorbar=True)
    if value.ndim == 3 and value.shape[-1] == 3 and value.dtype == np.uint8:
        return lambda ax: _show(ax, value)
    if value.ndim == 3:
        return lambda ax: _show(ax, pca_rgb(value), interpolation="nearest")
    return lambda ax: message_tile("", f"shape {value.shape}:\nno picture for this shape", MISSING_FACE).draw(ax)


# ---------------------------------------------------------------------------- drawing helpers
def pca_rgb(grid: np.ndarray) -> np.ndarray:
    """(h, w, c) features -> (h, w, 3) in 0..1: the first three principal components as R, G, B.

    Each component is stretched between its 1st and 99th percentile, so one outlier patch does not
    wash out the rest. Component signs are arbitrary (as in any PCA picture of DINO features).
    """
    h, w, c = grid.shape
    x = grid.reshape(h * w, c).astype(np.float64)
    x = x - x.mean(axis=0)
    _, _, vt = np.linalg.svd(x, full_matrices=False)
    proj = x @ vt[:3].T  # (h w, k), k = min(3, c, h w)
    proj = np.pad(proj, ((0, 0), (0, 3 - proj.shape[1])))
    lo, hi = np.percentile(proj, 1, axis=0), np.percentile(proj, 99, axis=0)
    rgb = np.clip((proj - lo) / np.where(hi > lo, hi - lo, 1.0), 0, 1)
    return rgb.reshape(h, w, 3)


def _show(ax, image: np.ndarray, cmap: str | None = None, colorbar: bool = False, interpolation: str = "antialiased"):
    shown = ax.imshow(image, cmap=cmap, interpolation=interpolation)
    ax.set_xticks([])
    ax.set_yticks([])
    if colorbar:
        ax.figure.colorbar(shown, ax=ax, fraction=0.046, pad=0.02)


def _vector(ax, value: np.ndarray):
    v = value.astype(np.float64)
    if len(v) <= 32:
        ax.bar(np.arange(len(v)), v, color="#546e7a")
    else:
        ax.plot(v, lw=0.8, color="#546e7a")
    ax.tick_params(labelsize=7)


def _table(ax, values: dict):
    """Scalars as a two-column text table: field name, value."""
    ax.axis("off")
    rows = [[name, _fmt(v)] for name, v in values.items()]
    height = min(1.0, ROW_HEIGHT * len(rows))  # 13 metadata rows fill the tile; 2 rows stay at the top
    table = ax.table(cellText=rows, cellLoc="left", colWidths=[0.55, 0.45], edges="horizontal",
                     bbox=[0, 1 - height, 1, height])
    table.auto_set_font_size(False)
    table.set_fontsize(8)
    for (row, col), cell in table.get_celld().items():
        cell.set_edgecolor("#cfd8dc")
        if col == 0:
            cell.get_text().set_color("#546e7a")


def _fmt(value) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, int):
        return f"{value:,}"
    return textwrap.shorten(str(value), 24, placeholder="…") or "—"
