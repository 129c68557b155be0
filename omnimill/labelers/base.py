"""The teacher interface.

A teacher maps a batch of canonical views to a dict of per-sample arrays, one per declared
field. It knows nothing of Dask or Zarr: the engine decodes, batches, and writes. Shapes are
per sample; the store adds the leading N axis.

A teacher declares what the rest of omnimill needs to know of its labels, so that nothing picks by
its name: each field's kind (fields.py), the sequence structure of its labels (`serializer`) and
its audit picture (`renderer`). A plug-in teacher may bring its own serializer class and renderer.
"""

from __future__ import annotations

import platform
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar

import numpy as np

from omnimill.errors import UserError
from omnimill.corpus.image import ImageInfo
from omnimill.labelers.fields import check_kind


@dataclass(frozen=True)
class Field:
    """One output of a teacher: per-sample shape and dtype, and what kind of thing it is.

    dense: the array lies on the canonical-view grid (its first two axes span the view).
    kind: one of fields.KINDS (a plug-in's own once defined); "" = not declared (guessed where needed).
    relative: continuous values with no scale shared across samples (relative depth).
    time: a leading axis of the clip's T frames (T, ...), aligned with its frame_times: set by a teacher that
          sees clips and gives a value per frame (a frame teacher never sets it: the store adds T itself).
    Variable-size outputs are padded to a declared maximum and come with a count field.
    """

    name: str
    shape: tuple[int, ...]
    dtype: str
    dense: bool = False
    doc: str = ""
    kind: str = ""
    relative: bool = False
    time: bool = False

    def __post_init__(self):
        check_kind(self.kind)

    def describe(self) -> dict:
        """The field's entry in its teacher's provenance "fields"; relative and time only when set."""
        out = {"shape": list(self.shape), "dtype": self.dtype, "dense": self.dense, "doc": self.doc}
        if self.kind:
            out["kind"] = self.kind
        if self.relative:
            out["relative"] = True
        if self.time:
            out["time"] = True
        return out


@dataclass
class Batch:
    """What a teacher sees: B canonical views, what is known of their originals (size, caption, ...),
    and the outputs of the teachers it `requires`, row-aligned: upstream["detection"]["boxes"][i].

    A teacher that sees frames (`Teacher.sees = "frames"`, every image teacher) gets one row per picture: an
    image, or one frame of a clip (key `CLIP_KEY#t`). A teacher that sees clips (`sees = "clips"`) gets one
    row per clip: `views` are its frames (B, T, S, S, 3), `infos` its first frame's, and `clips` holds the
    rest of the clip (ClipKind.clip_fields: audio segments, the span's waveform, frame and segment times,
    subtitles, has_audio, ...); upstream outputs of frame teachers then come per clip, (B, T, ...)."""

    views: np.ndarray  # (B, S, S, 3) uint8; clips: (B, T, S, S, 3)
    infos: list[ImageInfo]
    keys: list[str]
    upstream: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    clips: dict[str, Any] | None = None  # teachers that see clips: the clips' fields, row per clip

    def __len__(self) -> int:
        return len(self.keys)

    def subset(self, rows: list[int]) -> "Batch":
        upstream = {t: {f: a[rows] for f, a in fields.items()} for t, fields in self.upstream.items()}
        clips = None if self.clips is None else {name: _rows(value, rows) for name, value in self.clips.items()}
        return Batch(self.views[rows], [self.infos[i] for i in rows], [self.keys[i] for i in rows], upstream, clips)


def _rows(value, rows: list[int]):
    return value[rows] if isinstance(value, np.ndarray) else [value[i] for i in rows]


@dataclass
class TeacherSpec:
    """`NAME[=CHECKPOINT]` from the command line, plus options. Cheap to ship to workers."""

    name: str
    checkpoint: str | None = None
    options: dict = field(default_factory=dict)

    @classmethod
    def parse(cls, text: str) -> "TeacherSpec":
        name, _, checkpoint = text.partition("=")
        return cls(name.strip(), checkpoint.strip() or None)

    def __str__(self) -> str:
        return f"{self.name}={self.checkpoint}" if self.checkpoint else self.name

    @property
    def cache_key(self) -> tuple:
        return (self.name, self.checkpoint, tuple(sorted(self.options.items())))


class Teacher:
    """Base class. Subclasses set `name`, implement `fields`, `__call__`, and (for models) `load`."""

    name: ClassVar[str]
    requires: ClassVar[tuple[str, ...]] = ()  # teachers whose outputs this one reads (batch.upstream)
    needs_checkpoint: ClassVar[bool] = False
    default_checkpoint: ClassVar[str | None] = None  # what a user with network would pick
    version: ClassVar[str] = "1"  # bump when the output of the same inputs changes
    # What one batch row is: "frames" (a picture: an image, or each frame of a clip, whose outputs the store
    # keeps as (T, ...) per clip) or "clips" (a whole clip with its audio and subtitles, Batch.clips; stores
    # of other kinds refuse the teacher). Kept in provenance as "sees".
    sees: ClassVar[str] = "frames"
    # What `--option NAME.KEY=VALUE` may set: key -> (type, default); a default of None means "decided
    # by the checkpoint" (or off). registry.build refuses other keys and values of another type, so a
    # typo fails before any work instead of being recorded as a setting nothing read.
    options: ClassVar[dict[str, tuple[type, Any]]] = {}
    # The sequence structure of the labels: a structure name of omnimill.tokenize.serialize (SERIALIZERS),
    # or a Serializer subclass of a plug-in's own; None: no sequence tokenizer reads this teacher.
    serializer: ClassVar[str | type | None] = None
    # The audit picture: a picture name of omnimill.audit.render (RENDERERS, also the order teachers are
    # shown in), or a plug-in's own function (teacher, fields, sample) -> tiles; None: tiles by field kind.
    renderer: ClassVar[str | Callable | None] = None

    def __init__(self, spec: TeacherSpec, view_size: int):
        self.spec = spec
        self.view_size = view_size

    def option(self, key: str):
        """The option as given, else its declared default; an int given for a float option becomes a float."""
        kind, default = self.options[key]
        value = self.spec.options.get(key, default)
        return value if value is None else kind(value)

    @classmethod
    def check_options(cls, spec: TeacherSpec) -> None:
        """UserError for an option the teacher does not declare, or a value of another type."""
        for key, value in spec.options.items():
            if key not in cls.options:
                known = ", ".join(f"{k} ({t.__name__}, default {'auto' if d is None else d})"
                                  for k, (t, d) in cls.options.items())
                raise UserError(f"teacher {spec.name} has no option {key!r}; "
                                + (f"its options: {known}" if known else "it takes no options (declared in Teacher.options)"))
            kind, default = cls.options[key]
            if not _fits(value, kind, default):
                raise UserError(f"teacher {spec.name}: option {key} must be {kind.__name__}"
                                f"{' or null' if default is None else ''}, not {value!r}")

    def fields(self) -> list[Field]:
        raise NotImplementedError

    def load(self, device: str = "cpu", dtype: str = "float32") -> None:
        """Load weights onto the device. Weight-free teachers have nothing to do."""

    def __call__(self, batch: Batch) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def config(self) -> dict:
        """Settings that change the output; stored in provenance and compared on resume."""
        return {"view_size": self.view_size, "version": self.version, **self.spec.options}

    def provenance(self) -> dict:
        """Who made these labels: stored as the teacher group's attributes."""
        import numpy

        return {
            "teacher": self.name,
            "spec": str(self.spec),
            "checkpoint": self.spec.checkpoint,
            "config": self.config(),
            "fields": {f.name: f.describe() for f in self.fields()},
            **({"sees": self.sees} if self.sees != "frames" else {}),
            "libraries": {"python": platform.python_version(), "numpy": numpy.__version__},
        }


def _fits(value, kind: type, default) -> bool:
    if value is None:
        return default is None  # null only where the option may be left to the checkpoint
    if isinstance(value, bool) and kind is not bool:
        return False  # JSON true/false are ints to Python, but `sigma=true` is a mistake
    if kind is float:
        return isinstance(value, (int, float))  # 2 for 2.0 is what anyone means
    return isinstance(value, kind)
