"""One clip with every label it carries, as one PNG: what `omnimill audit show STORE KEY` writes for a clip store.

    ┌ title: key, file span, caption, has video / audio ─────────────────────────────┐
    │ frame strip: the T frames (the rgb teacher's, else decoded), each with its time │
    │ one row per picture of every frame teacher (canny edges, canny over rgb, ...)   │
    │ waveform (audio segments shaded) ── log-mel spectrogram ── tracks: frame times, │
    │   subtitles, every clip teacher's time segments (VAD speech, ASR segments)      │  x = clip seconds
    │ clip teachers' other fields: transcripts, captions, numbers, vectors (tiles)    │
    └─────────────────────────────────────────────────────────────────────────────────┘

Labels are read through the label store's read API. The store keeps no audio (teachers heard it; the
store keeps what they said), so the waveform and spectrogram are of the clip decoded again from its media
file through the store's own sample kind; a file that is gone gives a note in their place, not a failure.

Frame teachers' pictures are render.py's own, drawn once per frame (`teacher_tiles` on that frame's fields,
the frame's rgb view as `Sample.view`), so a clip's frame looks like an image sample's picture. Clip
teachers (`sees: clips` in provenance) are drawn by field shape: a float (K, 2) field is time segments in
clip seconds (rows of zeros are padding, as the count field beside it says) drawn as bars on the time
axis; a (K,) text field beside segments of the same K is their text (an ASR segment's words), written on
its bar; a text field of its own (a transcript, a caption, K frame captions) gets a tile of its whole text;
every other field goes to the teacher's tiles (render.py: its declared picture, else by kind). The corpus
caption is a tile too.
Fields of teachers that are not in the store are simply not drawn. A clip a teacher failed on gets the
reason from its unit marker.

The clip's HTML page (clip_report.py) reads the same `ClipLabels` (its `texts` keep every text whole, its
`field_tiles` are the tiles that are not text) and draws the audio rows alone with `timeline_figure`.
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from omnimill.audit.render import (DPI, FAILED_FACE, MISSING_FACE, Sample, Tile, _failure_reason, _field_names,
                                   _scalar_or_array, _view_field, message_tile, teacher_tiles,
                                   text_tile)
from omnimill.store.labels import LabelStore

FRAME_INCHES = 1.45  # one frame of the strip; 8 frames = 11.6 in = 1160 px
MIN_WIDTH_INCHES = 10.0
TILE_ROW_INCHES = 2.6  # a row of clip-teacher tiles
TILES_PER_ROW = 4
WAVE_INCHES, SPECTROGRAM_INCHES, TRACK_INCHES = 1.1, 1.4, 0.32
N_FFT, HOP, N_MELS = 400, 160, 64  # 25 ms windows every 10 ms at 16 kHz, 64 mel bands (Whisper-like)
SEGMENT_FACE = "#ffcc80"  # audio segments the audio teachers heard, shaded on the waveform
TRACK_COLOURS = ("#43a047", "#1e88e5", "#8e24aa", "#f4511e", "#00897b", "#6d4c41")


def render_clip(labels: LabelStore, key: str, out: Path | str) -> Path:
    """Write the panel of clip `key` of a clip store; returns its path. An unknown key raises UserError."""
    i = labels.index_of(key)
    clip = ClipLabels.read(labels, i)
    figure = clip_figure(clip)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, dpi=DPI, facecolor="white")
    return out


# ---------------------------------------------------------------------------- what is drawn
class ClipLabels:
    """Everything the panel draws of one clip, read from the store (and its audio from the media file)."""

    def __init__(self, key: str, index: int, n: int, source: str, caption: str, span: np.ndarray,
                 frame_times: np.ndarray, audio_spans: np.ndarray, has_video: bool, has_audio: bool,
                 cues: list, frames: np.ndarray | None, waveform: np.ndarray | None, audio_note: str,
                 frame_rows: list[tuple[str, list[Tile]]], tracks: list[tuple[str, list[tuple[float, float, str]]]],
                 tiles: list[Tile], decoded: bool = True, texts: list[tuple[str, str]] | None = None,
                 field_tiles: list[Tile] | None = None):
        self.key, self.index, self.n, self.source, self.caption = key, index, n, source, caption
        self.span, self.frame_times, self.audio_spans = span, frame_times, audio_spans
        self.has_video, self.has_audio, self.cues = has_video, has_audio, cues
        self.frames, self.waveform, self.audio_note = frames, waveform, audio_note
        self.frame_rows, self.tracks, self.tiles = frame_rows, tracks, tiles
        self.decoded = decoded  # False: the clip never decoded; times and has_* are unknown
        # The same labels split for a page that writes text as text (audit/clip_report.py): (title, whole text)
        # of the corpus caption and every clip teacher's text field; and the tiles that are not text.
        self.texts = texts if texts is not None else []
        self.field_tiles = field_tiles if field_tiles is not None else tiles

    @property
    def seconds(self) -> float:
        return max(1e-3, float(self.span[1] - self.span[0]))

    @classmethod
    def read(cls, labels: LabelStore, i: int) -> "ClipLabels":
        row = {name: _scalar_or_array(value[0]) for name, value in labels.samples(i, i + 1).items()}
        values = {name: np.asarray(v) for name, v in labels.sample_values(i).items()}
        span = values["span"].astype(np.float64)
        decoded = bool(span.any())  # the engine writes span when it decodes the clip
        if not decoded:  # the clip failed to decode: the index's span is all there is
            span = np.array([float(row["start"]), float(row["end"])])
        cues = json.loads(row["cues"]) if row.get("cues") else []
        frames, frame_rows, tracks, tiles, failures, texts, field_tiles = None, [], [], [], {}, [], []
        # the teacher holding the view first: frame teachers draw over its frames (canny over rgb)
        teachers = sorted(labels.teachers(), key=lambda t: not _view_field(t, labels.provenance(t), labels.view_size))
        for teacher in teachers:
            if not bool(labels.ok(teacher, i)):
                failures.setdefault(_failure_reason(labels, teacher, i), []).append(teacher)
                continue
            provenance = labels.provenance(teacher)
            fields = {name: _scalar_or_array(labels.read(f"{teacher}/{name}", i))
                      for name in _field_names(labels.arrays(teacher), provenance)}
            if provenance.get("sees", "frames") == "frames":
                view = _view_field(teacher, provenance, labels.view_size)
                if view and frames is None:
                    frames = fields[view]
                    continue  # the strip itself
                frame_rows += per_frame_rows(teacher, fields, provenance, frames, labels.view_size, row["keys"], i)
            else:
                found, rest = time_segments(teacher, fields)
                tracks += found
                said = {k: v for k, v in rest.items() if _is_text(v)}
                tiles += [text_tile(f"{teacher}/{name}", as_text(v) or "(empty)") for name, v in said.items()]
                texts += [(f"{teacher}/{name}", as_text(v, wrap=False)) for name, v in said.items()]
                rest = {k: v for k, v in rest.items() if k not in said}
                if rest:
                    drawn = teacher_tiles(teacher, rest, Sample(row["keys"], i, labels.view_size, provenance))
                    tiles += drawn
                    field_tiles += drawn
        if row["caption"]:
            tiles.insert(0, text_tile("caption (the corpus's)", textwrap.fill(str(row["caption"]), 44)))
            texts.insert(0, ("caption (the corpus's)", str(row["caption"])))
        for reason, names in failures.items():
            failed = message_tile(", ".join(names), "failed\n\n" + textwrap.fill(reason, 40), FAILED_FACE,
                                  color="#b71c1c")
            tiles.append(failed)
            field_tiles.append(failed)
        waveform, decoded_frames, note = clip_audio(labels, row, span)
        if frames is None:  # no rgb teacher: the frames of the same decode
            frames = decoded_frames
        return cls(str(row["keys"]), i, labels.n, str(row["source"]), str(row["caption"]), span,
                   values["frame_times"].astype(np.float64), values["audio_spans"].astype(np.float64),
                   bool(values["has_video"]), bool(values["has_audio"]), cues, frames, waveform, note,
                   frame_rows, tracks, tiles, decoded, texts, field_tiles)


def _is_text(value) -> bool:
    return isinstance(value, str) or (isinstance(value, np.ndarray) and value.ndim == 1 and value.dtype.kind in "OTUS")


def as_text(value, wrap: bool = True) -> str:
    """A text field for a tile: one text wrapped, or K texts numbered (padding '' left out); `wrap=False`
    for a page that wraps text itself."""
    fill = (lambda text: textwrap.fill(text, 44)) if wrap else (lambda text: text)  # noqa: E731
    if isinstance(value, str):
        return fill(value)
    return "\n".join(fill(f"{n + 1}. {t}") for n, t in enumerate(map(str, value)) if t)


def per_frame_rows(teacher: str, fields: dict, provenance: dict, frames, view_size: int, key: str,
                   i: int) -> list[tuple[str, list[Tile]]]:
    """A frame teacher's pictures, frame by frame: row r holds tile r of every frame (render.py's tiles)."""
    t_count = next((v.shape[0] for v in fields.values() if isinstance(v, np.ndarray)), 0)
    per_frame = []
    for t in range(t_count):
        at_t = {name: _scalar_or_array(v[t]) if isinstance(v, np.ndarray) else v for name, v in fields.items()}
        view = frames[t] if frames is not None else None
        per_frame.append(teacher_tiles(teacher, at_t, Sample(f"{key}#{t}", i, view_size, provenance, view)))
    rows = []
    for r in range(min(map(len, per_frame), default=0)):
        label = per_frame[0][r].title.split("\n")[0].split(" (")[0]
        rows.append((label, [tiles[r] for tiles in per_frame]))
    return rows


def time_segments(teacher: str, fields: dict) -> tuple[list, dict]:
    """A clip teacher's time-segment fields as tracks [(label, [(start, end, text), ...])], and its other
    fields. Segments: float (K, 2) in clip seconds; padding rows (end <= start) are dropped. A (K,) text
    field beside them is their text."""
    tracks, used = [], set()
    for name, value in fields.items():
        if not (isinstance(value, np.ndarray) and value.ndim == 2 and value.shape[1] == 2
                and value.dtype.kind == "f"):
            continue
        texts = next((n for n, v in fields.items() if isinstance(v, np.ndarray) and v.shape == value.shape[:1]
                      and v.dtype.kind in "OTUS"), None)
        words = [str(t) for t in fields[texts]] if texts else [""] * len(value)
        tracks.append((f"{teacher}/{name}", [(float(a), float(b), w) for (a, b), w in zip(value, words) if b > a]))
        used |= {name, texts}
    return tracks, {k: v for k, v in fields.items() if k not in used}


def clip_audio(labels: LabelStore, row: dict, span: np.ndarray):
    """The clip decoded again from its media file (the store keeps no audio): (waveform | None, frames | None,
    a note when there is no waveform to draw)."""
    from omnimill.corpus.clip import MediaPointer
    from omnimill.corpus.image import DEFAULT_MAX_PIXELS
    from omnimill.corpus.sample import DecodeSettings
    from omnimill.errors import SampleError

    if row.get("error"):
        return None, None, f"the file did not open: {row['error']}"
    sample = {**row, "start": float(span[0]), "end": float(span[1]), "subtitle_error": ""}
    pointer = MediaPointer(str(row["source"]), int(row["offset"]), int(row["size"]))  # the corpus's own access
    try:
        decoded = labels.kind.decode(pointer, sample, DecodeSettings(labels.view_size, DEFAULT_MAX_PIXELS))
    except (SampleError, OSError) as e:
        return None, None, f"audio not decoded again from {row['source']}: {e}"
    frames = decoded.frames if decoded.has_video else None
    if not decoded.has_audio:
        return None, frames, "no audio stream in this file (has_audio = false)"
    return decoded.waveform, frames, ""


def log_mel(waveform: np.ndarray, rate: int) -> np.ndarray:
    """(N_MELS, frames) log10 mel power of a mono waveform: Hann-windowed STFT, triangular mel filters."""
    if waveform.size < N_FFT:
        waveform = np.pad(waveform, (0, N_FFT - waveform.size))
    starts = np.arange(0, waveform.size - N_FFT + 1, HOP)
    windows = waveform[starts[:, None] + np.arange(N_FFT)] * np.hanning(N_FFT)
    power = np.abs(np.fft.rfft(windows, axis=1)) ** 2  # (frames, N_FFT / 2 + 1)
    mel = lambda hz: 2595 * np.log10(1 + hz / 700)  # noqa: E731  the HTK mel scale
    edges_hz = 700 * (10 ** (np.linspace(0, mel(rate / 2), N_MELS + 2) / 2595) - 1)
    bins = np.fft.rfftfreq(N_FFT, 1 / rate)
    lower, centre, upper = edges_hz[:-2, None], edges_hz[1:-1, None], edges_hz[2:, None]
    filters = np.maximum(0, np.minimum((bins - lower) / (centre - lower), (upper - bins) / (upper - centre)))
    return np.log10(np.maximum(filters @ power.T, 1e-10))


# ---------------------------------------------------------------------------- the figure
def clip_figure(clip: ClipLabels) -> Figure:
    t_count = len(clip.frame_times)
    columns = max(t_count, 1)
    width = max(MIN_WIDTH_INCHES, FRAME_INCHES * columns)
    tracks = timeline_tracks(clip)
    tile_rows = -(-len(clip.tiles) // TILES_PER_ROW)
    sections = [("strip", FRAME_INCHES + 0.3)] + [("frame_row", FRAME_INCHES)] * len(clip.frame_rows) + \
        [("wave", WAVE_INCHES), ("spectrogram", SPECTROGRAM_INCHES), ("tracks", TRACK_INCHES * len(tracks) + 0.45)] + \
        [("tiles", TILE_ROW_INCHES)] * tile_rows
    title = clip_title(clip)
    height = sum(h for _, h in sections) + 0.22 * (title.count("\n") + 1) + 0.3
    figure = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(figure)
    figure.suptitle(title, fontsize=10)
    grid = figure.add_gridspec(len(sections), 1, height_ratios=[h for _, h in sections])
    row = 0
    _frame_strip(figure, grid[row].subgridspec(1, columns), clip)
    row += 1
    for label, tiles in clip.frame_rows:
        _tile_row(figure, grid[row].subgridspec(1, columns), label, tiles)
        row += 1
    wave_ax = figure.add_subplot(grid[row])
    _waveform(wave_ax, clip)
    spectrum_ax = figure.add_subplot(grid[row + 1], sharex=wave_ax)
    _spectrogram(spectrum_ax, clip)
    tracks_ax = figure.add_subplot(grid[row + 2], sharex=wave_ax)
    _tracks(tracks_ax, tracks, clip.seconds)
    row += 3
    for r in range(tile_rows):
        cells = grid[row + r].subgridspec(1, TILES_PER_ROW)
        for c, tile in enumerate(clip.tiles[r * TILES_PER_ROW:(r + 1) * TILES_PER_ROW]):
            ax = figure.add_subplot(cells[c])
            tile.draw(ax)
            ax.set_title(tile.title, fontsize=8)
    return figure


def timeline_tracks(clip: ClipLabels) -> list:
    """What the time axis shows: frame times (ticks), subtitles, every clip teacher's time segments."""
    frame_ticks = [(float(t), float(t), f"{n}") for n, t in enumerate(clip.frame_times)] if clip.decoded else []
    return [("frames", frame_ticks),
            ("subtitles", [(float(a), float(b), str(text)) for a, b, text in clip.cues]), *clip.tracks]


def timeline_figure(clip: ClipLabels, width: float = MIN_WIDTH_INCHES) -> Figure:
    """The panel's audio rows alone: waveform (audio segments shaded), log-mel spectrogram, tracks; x = clip s."""
    tracks = timeline_tracks(clip)
    heights = [WAVE_INCHES, SPECTROGRAM_INCHES, TRACK_INCHES * len(tracks) + 0.45]
    figure = Figure(figsize=(width, sum(heights) + 0.2), layout="constrained")
    FigureCanvasAgg(figure)
    grid = figure.add_gridspec(3, 1, height_ratios=heights)
    wave_ax = figure.add_subplot(grid[0])
    _waveform(wave_ax, clip)
    _spectrogram(figure.add_subplot(grid[1], sharex=wave_ax), clip)
    _tracks(figure.add_subplot(grid[2], sharex=wave_ax), tracks, clip.seconds)
    return figure


def clip_title(clip: ClipLabels) -> str:
    start, end = clip.span
    source = clip.source if len(clip.source) <= 70 else "…" + clip.source[-69:]
    streams = (f"video: {'yes' if clip.has_video else 'no'}   audio: {'yes' if clip.has_audio else 'no'}"
               if clip.decoded else "not decoded (see why below)")
    lines = [f"{clip.key}   (index {clip.index} of {clip.n})   {source}",
             f"file seconds {start:.2f}–{end:.2f} ({end - start:.2f} s)   {streams}   times below are clip seconds "
             "(0 = span start)"]
    if clip.caption:
        lines.append("caption: “" + textwrap.shorten(clip.caption, 110, placeholder=" …") + "”")
    return "\n".join(lines)


def _frame_strip(figure, cells, clip: ClipLabels) -> None:
    for t, time in enumerate(clip.frame_times):
        ax = figure.add_subplot(cells[t])
        ax.set_xticks([])
        ax.set_yticks([])
        if clip.frames is not None and clip.has_video:
            ax.imshow(clip.frames[t])
        else:
            ax.set_facecolor(MISSING_FACE)
            note = "not decoded" if not clip.decoded else "no video" if not clip.has_video else "no rgb\nteacher"
            ax.text(0.5, 0.5, note, ha="center", va="center", fontsize=7, transform=ax.transAxes)
        ax.set_title(f"frame {t} · {time:.2f} s" if clip.decoded else f"frame {t}", fontsize=7)


def _tile_row(figure, cells, label: str, tiles: list[Tile]) -> None:
    for t, tile in enumerate(tiles):
        ax = figure.add_subplot(cells[t])
        tile.draw(ax)
        if t == 0:
            ax.set_ylabel(textwrap.fill(label, 22), fontsize=7)


def _waveform(ax, clip: ClipLabels) -> None:
    from omnimill.corpus.media import AUDIO_RATE

    for n, (a, b) in enumerate(clip.audio_spans):
        ax.axvspan(a, b, color=SEGMENT_FACE, alpha=0.5, lw=0, label="audio segments" if n == 0 else None)
    if clip.waveform is not None and clip.waveform.size:
        times = np.arange(clip.waveform.size) / AUDIO_RATE
        ax.plot(times, clip.waveform, lw=0.4, color="#37474f")
        ax.legend(loc="upper right", fontsize=6, framealpha=0.8)
    else:
        ax.text(0.5, 0.5, textwrap.shorten(clip.audio_note, 140), ha="center", va="center", fontsize=8,
                transform=ax.transAxes, color="#37474f")
    ax.set_xlim(0, clip.seconds)
    ax.set_ylabel("waveform", fontsize=7)
    ax.tick_params(labelsize=6, labelbottom=False)


def _spectrogram(ax, clip: ClipLabels) -> None:
    from omnimill.corpus.media import AUDIO_RATE

    if clip.waveform is None or not clip.waveform.size:
        ax.set_facecolor(MISSING_FACE)
    else:
        mel = log_mel(clip.waveform.astype(np.float64), AUDIO_RATE)
        top = mel.max()
        ax.imshow(np.maximum(mel, top - 8), origin="lower", aspect="auto", cmap="magma",  # 80 dB of range
                  extent=(0, mel.shape[1] * HOP / AUDIO_RATE, 0, N_MELS))
    ax.set_ylabel(f"log-mel\n({N_MELS} bands)", fontsize=7)
    ax.set_yticks([])
    ax.tick_params(labelsize=6, labelbottom=False)


def _tracks(ax, tracks: list, seconds: float) -> None:
    """One line per track: segments as bars with their text; zero-length items (frame times) as ticks."""
    for row, (label, items) in enumerate(tracks):
        colour = TRACK_COLOURS[row % len(TRACK_COLOURS)]
        y = len(tracks) - 1 - row
        for start, end, text in items:
            if end > start:
                ax.barh(y, end - start, left=start, height=0.7, color=colour, alpha=0.45, edgecolor=colour)
            else:
                ax.plot([start, start], [y - 0.35, y + 0.35], color=colour, lw=1.5)
            if text:
                ax.text(start, y, " " + textwrap.shorten(text, 60, placeholder="…"), va="center", fontsize=6,
                        clip_on=True)
        if not items:
            ax.text(0, y, " (none)", va="center", fontsize=6, color="#78909c")
    ax.set_yticks(range(len(tracks)), [label for label, _ in reversed(tracks)], fontsize=7)
    ax.set_ylim(-0.6, len(tracks) - 0.4)
    ax.set_xlim(0, seconds)
    ax.set_xlabel("clip seconds", fontsize=7)
    ax.tick_params(axis="x", labelsize=6)
