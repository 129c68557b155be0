"""One clip as an HTML page: `omnimill audit report STORE KEY --out clip.html` on a clip store.

    header     key, index, media file, file span, video / audio present, frame and segment counts
    frames     a table, one column per frame (its number and clip time): the frames themselves (the rgb
               teacher's views, else decoded again), then one row per picture of every frame teacher
               (clip_panel.per_frame_rows: render.py's tiles, drawn frame by frame)
    audio      an <audio controls> player of the clip's sound, then one picture on the clip's time axis:
               waveform (audio segments shaded), log-mel spectrogram, frame times, subtitles and every
               clip teacher's time segments (VAD speech, ASR segments) (clip_panel.timeline_figure)
    segments   each time-segment track as a table: start, end (clip seconds), text (an ASR segment's words)
    texts      the corpus caption and every clip teacher's text field (transcripts, captions) as text
    other      every other field of clip teachers (numbers, embeddings) as render.py's tiles; a teacher that
               failed on the clip says why

Everything is read as the clip panel reads it (clip_panel.ClipLabels: the store's read API, and the clip's
audio decoded again from its media file through the store's own sample kind, since the store keeps no
audio). The page is one self-contained file like the query report (report.py): pictures are inline PNGs
and the audio is an inline WAV (16 kHz mono, 16-bit PCM: ~43 kB per second as base64), so it can be mailed
or opened from any folder; no scripts. A clip without audio, or whose file is gone, gets a note in place of
the player.
"""

from __future__ import annotations

import base64
import html
import io
import wave
from pathlib import Path

import numpy as np

from omnimill.audit.clip_panel import ClipLabels, clip_title, timeline_figure
from omnimill.audit.render import DPI
from omnimill.audit.report import STYLE, _figure, _png, _tile_png
from omnimill.errors import UserError
from omnimill.store.labels import LabelStore

FRAME_PIXELS = 128  # a frame's cell on the page (the view is scaled to it): 8 frames fit 1280 px
CLIP_STYLE = """
section { overflow-x: auto; }
table.strip td, table.strip th { padding: 2px; border: none; text-align: center; font-size: 12px; }
table.strip th.row { text-align: right; color: #546e7a; font-weight: normal; max-width: 140px; }
table.strip img { width: %dpx; height: %dpx; object-fit: contain; image-rendering: pixelated; display: block; }
audio { width: 100%%; max-width: 960px; display: block; margin: 4px 0 12px; }
img.timeline { max-width: 100%%; display: block; }
p.note { color: #607d8b; font-style: italic; }
p.text { white-space: pre-wrap; margin: 4px 0 12px; }
""" % (FRAME_PIXELS, FRAME_PIXELS)


def write_clip_report(store: str, key: str, out: str | Path) -> Path:
    """Write the page of clip `key` of a clip store to `out` (parents created); returns its path."""
    labels = LabelStore.open(str(store))
    if labels.kind.frames_per_sample == 1:
        raise UserError(f"{labels.uri} holds {labels.sample_kind} samples: audit report draws a clip; for one "
                        f"sample use `omnimill audit show {labels.uri} KEY`")
    clip = ClipLabels.read(labels, labels.index_of(key))  # an unknown key: a UserError naming the store
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(clip_html(clip), encoding="utf-8")
    return out


def clip_html(clip: ClipLabels) -> str:
    e = html.escape
    header = "<br>".join(e(line) for line in clip_title(clip).splitlines()[:2])
    counts = f"{len(clip.frame_times)} frames · {len(clip.audio_spans)} audio segments"
    parts = ["<!doctype html><html lang='en'><head><meta charset='utf-8'>",
             f"<title>omnimill audit · clip {e(clip.key)}</title><style>{STYLE}{CLIP_STYLE}</style></head><body>",
             f"<h1>Clip <code>{e(clip.key)}</code></h1><p class='meta'>{header}<br>{counts}</p>",
             _section("frames", "Frames and their labels", frames_table(clip)),
             _section("audio", "Audio", audio_player(clip) + _timeline(clip)),
             _section("segments", "Time segments (clip seconds)", segment_tables(clip)),
             _section("texts", "Transcripts and captions", texts_html(clip))]
    if clip.field_tiles:
        parts.append(_section("other", "Other labels of the clip",
                              f"<div class='tiles'>{''.join(_figure(_tile_png(t), t.title) for t in clip.field_tiles)}"
                              "</div>"))
    parts.append("</body></html>\n")
    return "\n".join(parts)


def _section(anchor: str, heading: str, body: str) -> str:
    return f"<section id='{anchor}'><h2>{html.escape(heading)}</h2>{body}</section>"


# ---------------------------------------------------------------------------- frames
def frames_table(clip: ClipLabels) -> str:
    """One column per frame: the frame, then every frame teacher's picture of it, row by row."""
    e = html.escape
    if not len(clip.frame_times):
        return "<p class='note'>no frames</p>"
    heads = "".join(f"<th>frame {t} · {time:.2f} s</th>" if clip.decoded else f"<th>frame {t}</th>"
                    for t, time in enumerate(clip.frame_times))
    if clip.frames is not None and clip.has_video:
        cells = "".join(f"<td>{_img(_png(frame), f'frame {t}')}</td>" for t, frame in enumerate(clip.frames))
    else:
        note = "not decoded" if not clip.decoded else "no video" if not clip.has_video else "no rgb teacher"
        cells = f"<td colspan='{len(clip.frame_times)}'><p class='note'>{note}</p></td>"
    rows = [f"<tr><th></th>{heads}</tr>", f"<tr><th class='row'>frame</th>{cells}</tr>"]
    for label, tiles in clip.frame_rows:
        cells = "".join(f"<td>{_img(_tile_png(tile), f'{label}, frame {t}')}</td>" for t, tile in enumerate(tiles))
        rows.append(f"<tr><th class='row'>{e(label)}</th>{cells}</tr>")
    return f"<table class='strip'>{''.join(rows)}</table>"


def _img(png: bytes, alt: str) -> str:
    data = base64.b64encode(png).decode("ascii")
    return f"<img alt='{html.escape(alt)}' src='data:image/png;base64,{data}'>"


# ---------------------------------------------------------------------------- audio
def audio_player(clip: ClipLabels) -> str:
    """An <audio controls> of the clip's sound as an inline WAV, or a note saying why there is none."""
    if clip.waveform is None or not clip.waveform.size:
        return f"<p class='note'>no audio to play: {html.escape(clip.audio_note or 'empty')}</p>"
    from omnimill.corpus.media import AUDIO_RATE

    data = base64.b64encode(wav_bytes(clip.waveform, AUDIO_RATE)).decode("ascii")
    return (f"<audio controls preload='auto' title='{html.escape(clip.key)}' "
            f"src='data:audio/wav;base64,{data}'></audio>")


def wav_bytes(waveform: np.ndarray, rate: int) -> bytes:
    """A mono float waveform in [-1, 1] as a 16-bit PCM WAV file (what every browser plays)."""
    pcm = (np.clip(np.asarray(waveform, np.float64), -1, 1) * 32767).round().astype("<i2")
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(pcm.tobytes())
    return buffer.getvalue()


def _timeline(clip: ClipLabels) -> str:
    figure = timeline_figure(clip)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI, facecolor="white")
    data = base64.b64encode(buffer.getvalue()).decode("ascii")
    alt = "waveform, log-mel spectrogram and time segments"
    return f"<img class='timeline' alt='{alt}' src='data:image/png;base64,{data}'>"


# ---------------------------------------------------------------------------- segments and texts
def segment_tables(clip: ClipLabels) -> str:
    """Subtitles and every clip teacher's time segments, each a table of start, end, text."""
    e = html.escape
    tracks = [("subtitles", [(float(a), float(b), str(text)) for a, b, text in clip.cues]), *clip.tracks]
    out = []
    for label, items in tracks:
        rows = "".join(f"<tr><td class='num'>{a:.2f}</td><td class='num'>{b:.2f}</td><td>{e(text)}</td></tr>"
                       for a, b, text in items) or "<tr><td colspan='3'>(none)</td></tr>"
        out.append(f"<h3>{e(label)}</h3><table><thead><tr><th>start</th><th>end</th><th>text</th></tr></thead>"
                   f"<tbody>{rows}</tbody></table>")
    return "".join(out)


def texts_html(clip: ClipLabels) -> str:
    if not clip.texts:
        return "<p class='note'>no caption and no text labels</p>"
    return "".join(f"<h3>{html.escape(title)}</h3><p class='text'>{html.escape(text) or '(empty)'}</p>"
                   for title, text in clip.texts)

