"""The clip index: list video and audio corpora into clips `VIDEO_KEY/clip_0003` (media pointer, start, end),
taken once like the image index (corpus/clip.py is the clip kind, corpus/media.py decodes a clip).

Corpus: video files (mp4, mkv, webm, mov, avi) and audio files (wav, flac, mp3, ogg, m4a) in a folder, in
WebDataset tars or in a manifest, listed by corpus/listing.py (same forms, keys and captions as images).
Subtitles: a sidecar `name.srt` / `name.vtt` beside the file (or the tar member of that name), or a manifest
row's column `subtitles`: SRT/VTT text, a path to a .srt/.vtt file, or plain text (one cue over each of the
row's clips: an HD-VILA span's transcript).
Manifest spans: optional columns `start` and `end` (seconds).

Clips (`clips=`):
  fixed:SECONDS   every listed span (the whole file unless the manifest gives one) cut into SECONDS pieces
  spans           each listed span is one clip (HD-VILA style manifests); a file without a span is one clip
  scenes[:DETECTOR]  each video cut at its shot boundaries (corpus/scenes.py: content, the default, or
                  transnetv2); the cuts are found beforehand by the cut job (engine/cuts.py, over the videos
                  `videos_to_cut` lists) and given to `index_clips` as `cuts={video key: cut times}`. A row
                  with a manifest span keeps its span as one clip; an audio file (no shots) is cut only by
                  the maximum length; a video whose cut detection failed is one clip row with the error.
Every rule is a cut list through `spans_from_cuts` (cut times -> clips, with minimum and maximum length).

Each clip of the index is a row of a `CorpusIndex` (sample kind "clip"): `sources/offsets/sizes` point at
the media file, `extras` hold `video` (the file's key), `start`, `end` (file seconds), `cues` (the
subtitles cut to the clip, in clip time: [[start, end, text], ...]) or `subtitle_error` (a subtitle file
that does not parse: listed, then failed per sample when decoded, never a listing failure).
"""

from __future__ import annotations

import math
import posixpath

from omnimill.corpus.clip import (DEFAULT_CLIPS, DEFAULT_MAX_SECONDS, DEFAULT_MIN_SECONDS, ClipKind, is_audio_file,
                                  open_media_file)
from omnimill.corpus.listing import CorpusIndex, index_corpus, url_to_fs
from omnimill.corpus.media import probe
from omnimill.corpus.scenes import DEFAULT_DETECTOR, DETECTORS
from omnimill.corpus.subtitles import Cue, cut, parse_subtitles
from omnimill.errors import SampleError, UserError

SUBTITLE_EXTS = ("srt", "vtt")


def parse_clips(rule: str) -> tuple[str, float]:
    """`fixed:SECONDS` -> ("fixed", SECONDS); `spans` -> ("spans", 0.0); `scenes[:DETECTOR]` -> ("scenes",
    0.0) (`scene_detector` names its detector); UserError otherwise."""
    name, _, arg = rule.partition(":")
    if name == "spans" and not arg:
        return "spans", 0.0
    if name == "scenes" and (not arg or arg in DETECTORS):
        return "scenes", 0.0
    if name == "fixed":
        try:
            seconds = float(arg)
        except ValueError:
            seconds = 0.0
        if seconds > 0 and math.isfinite(seconds):
            return "fixed", seconds
    raise UserError(f"--clips {rule!r}: give fixed:SECONDS (e.g. fixed:10), spans, or scenes[:DETECTOR] "
                    f"(detectors: {', '.join(DETECTORS)})")


def scene_detector(rule: str) -> str | None:
    """The scene detector a `--clips` rule asks for (`scenes` -> the default one), or None for other rules."""
    if parse_clips(rule)[0] != "scenes":
        return None
    return rule.partition(":")[2] or DEFAULT_DETECTOR


def spans_from_cuts(start: float, end: float, cuts, min_seconds: float = DEFAULT_MIN_SECONDS,
                    max_seconds: float = DEFAULT_MAX_SECONDS) -> list[tuple[float, float]]:
    """Cut times inside (start, end) -> clips between consecutive cuts; a clip longer than `max_seconds` is
    split into equal parts, one shorter than `min_seconds` is dropped."""
    bounds = [start, *sorted(c for c in set(cuts) if start < c < end), end]
    spans = []
    for a, b in zip(bounds, bounds[1:]):
        parts = max(1, math.ceil((b - a) / max_seconds - 1e-9)) if max_seconds > 0 else 1
        for k in range(parts):
            s, e = a + (b - a) * k / parts, a + (b - a) * (k + 1) / parts
            if e - s >= min_seconds:
                spans.append((round(s, 6), round(e, 6)))
    return spans


def fixed_cuts(start: float, end: float, seconds: float) -> list[float]:
    """Cut times every `seconds` from `start`."""
    return [start + seconds * k for k in range(1, math.ceil((end - start) / seconds - 1e-9))]


def index_clips(uri: str, clips: str = DEFAULT_CLIPS, storage_options: dict | None = None,
                min_seconds: float = DEFAULT_MIN_SECONDS, max_seconds: float = DEFAULT_MAX_SECONDS,
                cuts: dict[str, list[float] | str] | None = None) -> CorpusIndex:
    """List the media of a corpus into clips (module docstring). Files whose length the rule needs are probed
    (their header only, through a seekable file). A file that does not open becomes one clip row with
    `extras["error"]`: it fails as a sample when decoded (recorded, the job goes on), it is not dropped.
    `cuts` (for `scenes`): {video key: cut times in file seconds, or why its cut detection failed} for every
    video `videos_to_cut` lists. Raises UserError for a bad rule, bad lengths, a bad manifest span, missing
    cuts or a corpus without clips."""
    rule, seconds = parse_clips(clips)
    if min_seconds < 0 or max_seconds <= 0 or min_seconds > max_seconds:
        raise UserError(f"clip lengths: need 0 <= min ({min_seconds}) <= max ({max_seconds}) and max > 0")
    files, by_file = _files(uri, storage_options)
    base = posixpath.dirname(files.uri) if files.kind == "manifest" else ""
    index = CorpusIndex(files.uri, files.kind, sample_kind=ClipKind.name)
    for rows in by_file.values():
        first = rows[0]
        video = files.keys[first]
        pointer = (files.sources[first], files.offsets[first], files.sizes[first])
        listed = [(_span(files.extras[i], uri, i), i) for i in rows]
        if any(end is None for (_, end), _ in listed):  # a span to the file's end: its length is needed
            duration = _duration(*pointer, storage_options)
            if isinstance(duration, str):
                index.add(f"{video}/clip_0000", *pointer, files.captions[first],
                          {"video": video, "start": 0.0, "end": 0.0, "error": duration})
                continue
            listed = [((a, duration if b is None else b), i) for (a, b), i in listed]
        n = 0
        for (a, b), i in sorted(listed):
            subtitles = _subtitles(files.extras[i], base, storage_options)  # a sidecar's, or the row's own
            cut_times, longest = [], math.inf  # spans, and a manifest span under scenes: one clip
            if rule == "fixed":
                cut_times, longest = fixed_cuts(a, b, seconds), max_seconds
            elif rule == "scenes" and not _has_span(files.extras[i]):
                found = _scene_cuts(cuts, video, pointer[0], clips)
                if isinstance(found, str):  # the video did not decode for cut detection: it fails as a sample
                    index.add(f"{video}/clip_{n:04d}", *pointer, files.captions[i],
                              {"video": video, "start": a, "end": b, "error": f"scene cut detection: {found}"})
                    n += 1
                    continue
                cut_times, longest = found, max_seconds
            for s, e in spans_from_cuts(a, b, cut_times, min_seconds, longest):
                extras = {"video": video, "start": s, "end": e, **_clip_subtitles(subtitles, s, e)}
                index.add(f"{video}/clip_{n:04d}", *pointer, files.captions[i], extras)
                n += 1
    if not len(index):
        raise UserError(f"no clips in {files.uri} with --clips {clips}: every span is shorter than {min_seconds}s")
    return index


def videos_to_cut(uri: str, storage_options: dict | None = None) -> tuple[str, str, list[tuple[str, str, int, int]]]:
    """What `--clips scenes` needs cut: (corpus uri, corpus kind, [(video key, source, offset, size)]) of every
    video file with a row that gives no span (audio files and manifest spans are not cut at shots)."""
    files, by_file = _files(uri, storage_options)
    videos = []
    for rows in by_file.values():
        first = rows[0]
        if not is_audio_file(files.sources[first]) and not all(_has_span(files.extras[i]) for i in rows):
            videos.append((files.keys[first], files.sources[first], files.offsets[first], files.sizes[first]))
    return files.uri, files.kind, videos


def _files(uri: str, storage_options: dict | None):
    """The corpus's media files (a CorpusIndex of files) and {(source, offset): its rows}: a manifest may list
    many spans of one file."""
    files = index_corpus(uri, storage_options, ClipKind(), sidecars=SUBTITLE_EXTS)
    by_file: dict[tuple[str, int], list[int]] = {}
    for i, source in enumerate(files.sources):
        by_file.setdefault((source, files.offsets[i]), []).append(i)
    return files, by_file


def _has_span(extra: dict) -> bool:
    """Does a manifest row give a span (start or end)?"""
    return any(extra.get(k) not in (None, "") for k in ("start", "end"))


def _scene_cuts(cuts: dict | None, video: str, source: str, clips: str) -> list[float] | str:
    if is_audio_file(source):
        return []  # no shots in an audio file: the maximum length cuts it
    if cuts is None or video not in cuts:
        raise UserError(f"--clips {clips} needs the scene cuts of {video}, which were not given: list clips through "
                        "`omnimill label --clips scenes` (it runs the cut job first) or `omnimill cuts`")
    return cuts[video]


def _span(extra: dict, uri: str, row: int) -> tuple[float, float | None]:
    """A manifest row's (start, end) in seconds; end None: the file's end."""
    try:
        start = float(extra.get("start") or 0.0)
        end = float(extra["end"]) if extra.get("end") not in (None, "") else None
    except (TypeError, ValueError):
        raise UserError(f"manifest {uri} row {row}: start/end must be seconds, got {extra.get('start')!r}, "
                        f"{extra.get('end')!r}") from None
    if start < 0 or (end is not None and end <= start):
        raise UserError(f"manifest {uri} row {row}: span ({start}, {end}) is empty or negative")
    return start, end


def _duration(source: str, offset: int, size: int, storage_options: dict | None) -> float | str:
    """The file's duration in seconds from its header, or why it is not known."""
    try:
        with open_media_file(source, offset, size, storage_options) as f:
            info = probe(f)
    except SampleError as e:
        return e.reason
    except OSError as e:
        return f"does not read ({e})"
    return info.duration or "its container states no duration"


def _subtitles(extra: dict, base: str, storage_options: dict | None) -> list[Cue] | str | None:
    """The file's subtitles as cues (file time), a reason string if they do not parse, or None."""
    text = next((extra[ext] for ext in SUBTITLE_EXTS if ext in extra), None)
    plain = False
    if text is None:
        given = extra.get("subtitles", extra.get("subtitle"))
        if given in (None, ""):
            return None
        text = str(given)
        if "\n" not in text and text.lower().endswith(tuple(f".{e}" for e in SUBTITLE_EXTS)):
            path = text if "://" in text or posixpath.isabs(text) else posixpath.join(base, text)
            try:
                fs, p = url_to_fs(path, storage_options)
                with fs.open(p, "rb") as f:
                    text = f.read().decode("utf-8-sig", errors="replace")
            except OSError as e:
                return f"subtitle file {path} does not read ({e})"
        else:
            plain = "-->" not in text  # subtitle text without timings: one cue over each clip
    if plain:
        return [Cue(0.0, math.inf, text.strip())]
    try:
        return parse_subtitles(text)
    except SampleError as e:
        return e.reason


def _clip_subtitles(subtitles, start: float, end: float) -> dict:
    if subtitles is None:
        return {}
    if isinstance(subtitles, str):
        return {"subtitle_error": subtitles}
    return {"cues": [[c.start, c.end, c.text] for c in cut(subtitles, start, end)]}
