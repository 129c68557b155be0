"""Neighbours of a sample, an image, a text or an audio file: `omnimill audit query DIR (--key K | --image F |
--text T | --audio F)`.

    --key K       the stored vector of sample K (the index's field, read from the label store); on a
                  per-frame index of a clip store, `--frame t` asks with frame t of clip K, and without it
                  the clip asks with the mean of its frames' unit vectors (the clip as a whole)
    --image FILE  the field's teacher, rebuilt from the store's provenance (labelers/rebuild.py: spec,
                  checkpoint path, options; its sha256 must still match), run on the file's canonical view
                  (only a built-in teacher, or the plug-in the user names with --teacher-plugin: a store
                  is data, and importing a module it names would run that module's code)
    --text "..."  the teacher's text tower, `embed_text`, for teachers whose text lives in the same space
                  (clip, imagebind: image and text; caption_embed: captions; clap: audio and text)
    --audio FILE  the teacher's audio side, `embed_audio` (clap), on the file decoded by corpus/media.py to
                  16 kHz mono (any audio or video file PyAV reads; its whole length)
    ──▶ L2-normalise ──▶ FAISS top k ──▶ FAISS ids ──ids.npy──▶ sample indices, keys, captions

Before anything is searched, the store the index was built from is checked against the index's
fingerprint (the store's `created`, N, the teacher's `created` and checkpoint sha256): an index of
another store, or of labels relabelled since, is refused with a UserError. A key query leaves the
sample itself out of its neighbours.

On a per-frame index (audit/index.py: one vector per frame of a clip) the answer is still k clips: each
clip once, at its best frame (`Neighbour.frame`, and `time`, its clip seconds), so that the T near-alike
frames of one shot do not fill the list.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from omnimill.audit.index import LoadedIndex, fingerprint, load_index, normalise
from omnimill.errors import SampleError, UserError
from omnimill.labelers.rebuild import rebuild_teacher, trusted_teacher  # audit's names since before the move
from omnimill.store.labels import LabelStore

DEFAULT_K = 10


@dataclass
class Neighbour:
    rank: int
    key: str
    index: int  # sample index in the store
    score: float  # cosine similarity to the query

    caption: str = ""
    frame: int | None = None  # per-frame index: the clip's best-matching frame
    time: float | None = None  # and its time in clip seconds

    @property
    def distance(self) -> float:
        return 1.0 - self.score


@dataclass
class QueryResult:
    kind: str  # key | image | text | audio
    value: str  # the key, the image or audio path or the text
    neighbours: list[Neighbour]
    info: dict  # the index's info.json
    store: str
    index: int | None = None  # the query sample's index in the store (key queries)
    view: np.ndarray | None = field(default=None, repr=False)  # the query image's canonical view (image queries)
    frame: int | None = None  # the query's frame (key queries with --frame)

    def as_dict(self) -> dict:
        frames = self.info.get("unit") == "frame"
        return {"query": {"kind": self.kind, "value": self.value, "index": self.index,
                          **({"frame": self.frame} if frames else {})},
                "index": str(self.info.get("path", "")), "field": self.info["field"], "store": self.store,
                "unit": self.info.get("unit", "image"), "metric": "cosine",
                "neighbours": [{"rank": n.rank, "key": n.key, "index": n.index, "cosine": round(n.score, 6),
                                "distance": round(n.distance, 6), "caption": n.caption,
                                **({"frame": n.frame, "time": n.time} if frames else {})}
                               for n in self.neighbours]}


def open_store(info: dict, store: str | None = None) -> LabelStore:
    """The label store an index was built from (or `store`), refused unless it matches the fingerprint."""
    uri = store or info["store"]
    if not LabelStore.exists(uri):
        hint = "" if store else " (moved? pass --store)"
        raise UserError(f"the label store of this index, {uri}, does not exist{hint}")
    labels = LabelStore.open(uri)
    teacher = info["teacher"]
    built = info["fingerprint"]
    if teacher not in labels.teachers():
        raise UserError(f"index of {info['field']} was built from another store: {uri} has no teacher {teacher}")
    now = fingerprint(labels, teacher)
    if now["store_created"] != built["store_created"] or now["n"] != built["n"]:
        raise UserError(f"index of {info['field']} was built from another store ({info['store']}, created "
                        f"{built['store_created']}, {built['n']} samples), not {uri} (created "
                        f"{now['store_created']}, {now['n']} samples); rebuild it with `omnimill audit index`")
    if now != built:
        raise UserError(f"{teacher} in {uri} was relabelled since the index was built (labels created "
                        f"{now['teacher_created']}, index of {built['teacher_created']}); rebuild it with "
                        "`omnimill audit index`")
    return labels


def query(index_dir: str | Path, key: str | None = None, image: str | Path | None = None, text: str | None = None,
          k: int = DEFAULT_K, store: str | None = None, device: str = "auto",
          teacher_plugin: str | None = None, audio: str | Path | None = None,
          frame: int | None = None) -> QueryResult:
    """The k nearest indexed samples to one key, image file, text or audio file. `teacher_plugin`
    (module.path:Class): the plug-in teacher the user trusts, when the store's provenance names one (image,
    text and audio queries). `frame`: with `key` on a per-frame index, ask with that frame of the clip."""
    given = [name for name, v in (("--key", key), ("--image", image), ("--text", text), ("--audio", audio))
             if v is not None]
    if len(given) != 1:
        got = f" (got {', '.join(given)})" if given else ""
        raise UserError(f"give exactly one of --key, --image or --text (or --audio, on an index of audio "
                        f"embeddings){got}")
    if k < 1:
        raise UserError(f"-k {k}: ask for at least one neighbour")
    loaded = load_index(index_dir)  # a damaged file: one line (UserError)
    info = {**loaded.info, "path": str(Path(index_dir))}
    if frame is not None and (key is None or loaded.frames is None):
        raise UserError(f"--frame asks with one frame of a --key clip, on a per-frame index (this one is of "
                        f"{info['field']}, one vector per {info.get('unit', 'image')})")
    labels = open_store(info, store)
    teacher, name = info["teacher"], info["field"].split("/", 1)[1]
    view, own = None, None
    if key is not None:
        own = labels.index_of(key)
        vector = stored_vector(labels, teacher, name, own, key, frame)
        kind, value = "key", key
    elif image is not None:
        vector, view = image_vector(labels, info, Path(image), device, teacher_plugin)
        kind, value = "image", str(image)
    elif audio is not None:
        vector = audio_vector(labels, info, Path(audio), device, teacher_plugin)
        kind, value = "audio", str(audio)
    else:
        vector = text_vector(labels, info, text, device, teacher_plugin)
        kind, value = "text", text
    neighbours = search(loaded, labels, vector, k, exclude=own)
    return QueryResult(kind, value, neighbours, info, labels.uri, own, view, frame)


def search(loaded: LoadedIndex, labels: LabelStore, vector: np.ndarray, k: int,
           exclude: int | None = None) -> list[Neighbour]:
    """Top-k neighbours of one raw vector; `exclude` (a sample index) is left out. On a per-frame index,
    k clips, each at its best frame."""
    unit, good = normalise(np.asarray(vector, np.float32).reshape(1, -1))
    if not good.all():
        raise UserError("the query gives a zero (or non-finite) vector: nothing to compare")
    dim = loaded.info["dim"]
    if unit.shape[1] != dim:
        raise UserError(f"the query vector has {unit.shape[1]} dimensions, the index {dim}")
    per_clip = 1 if loaded.frames is None else int(loaded.info["frames_per_sample"])
    # enough candidates that k distinct samples survive: a clip's T frames (and the query's own) may all come first
    wanted = min(len(loaded.ids), (k + (exclude is not None)) * per_clip)
    scores, found = loaded.search(unit, wanted)
    neighbours, seen = [], set()
    for score, fid in zip(scores[0], found[0]):  # best first
        if fid < 0 or len(neighbours) == k:
            continue
        i = int(loaded.ids[fid])
        if i == exclude or i in seen:
            continue
        seen.add(i)
        frame = None if loaded.frames is None else int(loaded.frames[fid])
        time = None if frame is None else round(float(labels.sample_values(i)["frame_times"][frame]), 3)
        neighbours.append(Neighbour(len(neighbours) + 1, str(loaded.keys[fid]), i, float(score),
                                    caption_of(labels, i), frame, time))
    return neighbours


def caption_of(labels: LabelStore, i: int) -> str:
    """The corpus's own caption, else the captioner teacher's best one marked "(generated)", else ""."""
    caption = str(labels.read("caption", i))
    if not caption and "captioner" in labels.teachers() and bool(labels.read("captioner/ok", i)):
        captions = labels.read("captioner/captions", i).ravel()
        caption = f"{captions[0]} (generated)" if len(captions) and str(captions[0]) else ""
    return caption


# ---------------------------------------------------------------------------- the query vector
def stored_vector(labels: LabelStore, teacher: str, name: str, i: int, key: str,
                  frame: int | None = None) -> np.ndarray:
    """Sample i's vector; of a clip's (T, D) frame field: frame `frame`, or the mean of its frames' unit vectors."""
    if not bool(labels.read(f"{teacher}/ok", i)):
        raise UserError(f"sample {key!r} has no {teacher} labels (it failed or is not labelled yet; "
                        f"see `omnimill status {labels.uri}`)")
    vector = labels.read(f"{teacher}/{name}", i).astype(np.float32)
    if vector.ndim == 2:  # (T, D): frames of a clip
        if frame is not None and not 0 <= frame < len(vector):
            raise UserError(f"--frame {frame}: clip {key!r} has frames 0..{len(vector) - 1}")
        units, good = normalise(vector)
        vector = vector[frame] if frame is not None else units.mean(0) if good.any() else vector[0]
    if not np.isfinite(vector).all() or not np.any(vector):
        raise UserError(f"sample {key!r} has a zero {teacher}/{name} vector (e.g. no caption to embed): "
                        "nothing to compare")
    return vector


def image_vector(labels: LabelStore, info: dict, path: Path, device: str,
                 plugin: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The field's vector for an image file: its canonical view through the field's teacher."""
    from omnimill.labelers.base import Batch
    from omnimill.corpus.image import decode_view

    if not path.is_file():
        raise UserError(f"--image {path}: no such file")
    if labels.provenance(info["teacher"]).get("sees", "frames") == "clips":
        raise UserError(f"{info['field']} is made from whole clips (its teacher sees clips, not pictures): query "
                        "it by --key, --audio or --text")
    try:
        decoded = decode_view(path.read_bytes(), labels.view_size)
    except SampleError as e:
        raise UserError(f"--image {path}: {e}") from None
    teacher = rebuild_teacher(labels, info["teacher"], device, plugin)
    if teacher.requires:
        raise UserError(f"teacher {info['teacher']} reads the outputs of {', '.join(teacher.requires)}: "
                        "query it by --key instead")
    name = info["field"].split("/", 1)[1]
    out = teacher(Batch(np.stack([decoded.view]), [decoded.info], [path.stem]))  # writable, as the engine's
    vector = np.asarray(out[name][0], np.float32)
    if not np.any(vector):
        raise UserError(f"{info['field']} gives no vector for an image (it embeds text?); use --text")
    return vector, decoded.view


def text_vector(labels: LabelStore, info: dict, text: str, device: str, plugin: str | None = None) -> np.ndarray:
    """The field's vector for a text, through the teacher's `embed_text` (same space as its embeddings)."""
    from omnimill.labelers.registry import teacher_class

    if not text.strip():
        raise UserError("--text is empty")
    name = trusted_teacher(labels, info["teacher"], plugin)
    if not hasattr(teacher_class(name), "embed_text"):
        raise UserError(f"{info['field']} has no text tower: text queries need an index of a teacher with "
                        f"one ({', '.join(text_teachers()) or 'none installed'}), e.g. clip/embedding")
    teacher = rebuild_teacher(labels, info["teacher"], device, plugin)
    return np.asarray(teacher.embed_text([text])[0], np.float32)


def audio_vector(labels: LabelStore, info: dict, path: Path, device: str, plugin: str | None = None) -> np.ndarray:
    """The field's vector for an audio (or video) file: its whole audio, 16 kHz mono as corpus/media.py decodes
    a clip's, through the teacher's `embed_audio` (CLAP's audio side)."""
    from omnimill.labelers.registry import teacher_class

    if not path.is_file():
        raise UserError(f"--audio {path}: no such file")
    name = trusted_teacher(labels, info["teacher"], plugin)
    if not hasattr(teacher_class(name), "embed_audio"):
        raise UserError(f"{info['field']} has no audio side: audio queries need an index of a teacher with "
                        f"one ({', '.join(audio_teachers()) or 'none installed'}), e.g. clap/embedding")
    waveform = decode_audio(path)
    teacher = rebuild_teacher(labels, info["teacher"], device, plugin)
    return np.asarray(teacher.embed_audio([waveform])[0], np.float32)


def decode_audio(path: Path) -> np.ndarray:
    """A file's whole audio track, 16 kHz mono float32 (corpus/media.py's decode of a clip from 0 to its end)."""
    from omnimill.corpus.media import decode_clip, probe

    try:
        media = probe(str(path))
        if not media.has_audio:
            raise UserError(f"--audio {path}: the file has no audio stream")
        if not media.duration:
            raise UserError(f"--audio {path}: the file does not say how long it is")
        decoded = decode_clip(str(path), 0.0, media.duration, need_video=False, frames=1, audio_segments=1)
    except SampleError as e:
        raise UserError(f"--audio {path}: {e}") from None
    if not np.any(decoded.waveform):
        raise UserError(f"--audio {path}: the audio is silent (all zeros): nothing to compare")
    return decoded.waveform


def audio_teachers() -> list[str]:
    """Built-in teachers with an audio side in their field's space (they have `embed_audio`)."""
    return _teachers_with("embed_audio")


def text_teachers() -> list[str]:
    """Built-in teachers whose text embeddings share their field's space (they have `embed_text`)."""
    return _teachers_with("embed_text")


def _teachers_with(method: str) -> list[str]:
    from omnimill.labelers.registry import available, teacher_class

    found = []
    for name in available():
        try:
            if hasattr(teacher_class(name), method):
                found.append(name)
        except UserError:  # a teacher whose module cannot be imported here
            continue
    return found
