"""Subtitles: parse SubRip (.srt) and WebVTT (.vtt) text into cues, and cut them to a clip.

A small parser of our own: both formats are blocks separated by blank lines, each with a timing line
`START --> END` (SRT: `00:01:02,500`; VTT: `00:01:02.500` or `01:02.500`, optional cue settings after END)
followed by text lines. Inline tags (`<i>`, `<c.yellow>`, VTT timestamps `<00:01:03.000>`) are dropped from
the text. A file with text but not one timing line, or with a timing line that does not read, raises
`SampleError("subtitles", reason)`: the sample is recorded as failed, the job goes on.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from omnimill.errors import SampleError

TIMING = re.compile(r"^\s*(\S+)\s+-->\s+(\S+)")
TIMESTAMP = re.compile(r"^(?:(\d+):)?(\d{1,2}):(\d{1,2})[,.](\d{1,3})$")
TAG = re.compile(r"<[^>]*>")


@dataclass(frozen=True)
class Cue:
    start: float  # seconds
    end: float
    text: str


def parse_timestamp(text: str) -> float:
    """`01:02:03,500`, `01:02:03.500` or `02:03.500` -> seconds; ValueError otherwise."""
    m = TIMESTAMP.match(text.strip())
    if not m:
        raise ValueError(f"not a subtitle timestamp: {text!r}")
    hours, minutes, seconds, millis = m.groups()
    return int(hours or 0) * 3600 + int(minutes) * 60 + int(seconds) + int(millis.ljust(3, "0")) / 1000


def parse_subtitles(data: bytes | str, name: str = "subtitles") -> list[Cue]:
    """SRT or VTT text -> cues in file order. Empty text gives no cues; text that is not subtitles raises
    SampleError("subtitles", ...), naming `name` and the line."""
    text = data.decode("utf-8-sig", errors="replace") if isinstance(data, bytes) else data.lstrip("\ufeff")
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    cues: list[Cue] = []
    i = 0
    while i < len(lines):
        m = TIMING.match(lines[i])
        if not m:
            i += 1  # SRT counters, the WEBVTT header, NOTE/STYLE blocks, cue identifiers
            continue
        try:
            start, end = parse_timestamp(m.group(1)), parse_timestamp(m.group(2))
        except ValueError as e:
            raise SampleError("subtitles", f"{name} line {i + 1}: {e}") from None
        if end < start:
            raise SampleError("subtitles",
                              f"{name} line {i + 1}: cue ends ({end:.3f}s) before it starts ({start:.3f}s)")
        i += 1
        body = []
        while i < len(lines) and lines[i].strip():
            body.append(TAG.sub("", lines[i]).strip())
            i += 1
        cues.append(Cue(start, end, "\n".join(b for b in body if b)))
    if not cues and text.strip() and not text.lstrip().startswith("WEBVTT"):
        raise SampleError("subtitles", f"{name} is not SRT or WebVTT: no 'START --> END' timing line")
    return cues


def cut(cues: list[Cue], start: float, end: float) -> list[Cue]:
    """The cues that overlap [start, end), clipped to it and re-timed to clip time (0 = `start`)."""
    out = []
    for cue in cues:
        if cue.end > start and cue.start < end:
            out.append(Cue(max(cue.start, start) - start, min(cue.end, end) - start, cue.text))
    return out
