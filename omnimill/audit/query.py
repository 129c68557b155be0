"""Neighbours of a sample, an image file or a text: `omnimill audit query DIR (--key K | --image F | --text T)`.

    --key K       the stored vector of sample K (the index's field, read from the label store)
    --image FILE  the field's teacher, rebuilt from the store's provenance (spec, checkpoint path, options;
                  its sha256 must still match), run on the file's canonical view
                  (only a built-in teacher, or the plug-in the user names with --teacher-plugin: a store
                  is data, and importing a module it names would run that module's code)
    --text "..."  the teacher's text tower, `embed_text`, for teachers whose text lives in the same space
                  (clip, imagebind: image and text; caption_embed: captions)
    ──▶ L2-normalise ──▶ FAISS top k ──▶ FAISS ids ──ids.npy──▶ sample indices, keys, captions

Before anything is searched, the store the index was built from is checked against the index's
fingerprint (the store's `created`, N, the teacher's `created` and checkpoint sha256): an index of
another store, or of labels relabelled since, is refused with a UserError. A key query leaves the
sample itself out of its neighbours.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from omnimill.audit.index import LoadedIndex, fingerprint, load_index, normalise
from omnimill.errors import SampleError, UserError
from omnimill.store.labels import LabelStore

DEFAULT_K = 10


@dataclass
class Neighbour:
    rank: int
    key: str
    index: int  # sample index in the store
    score: float  # cosine similarity to the query

    caption: str = ""

    @property
    def distance(self) -> float:
        return 1.0 - self.score


@dataclass
class QueryResult:
    kind: str  # key | image | text
    value: str  # the key, the image path or the text
    neighbours: list[Neighbour]
    info: dict  # the index's info.json
    store: str
    index: int | None = None  # the query sample's index in the store (key queries)
    view: np.ndarray | None = field(default=None, repr=False)  # the query image's canonical view (image queries)

    def as_dict(self) -> dict:
        return {"query": {"kind": self.kind, "value": self.value, "index": self.index},
                "index": str(self.info.get("path", "")), "field": self.info["field"], "store": self.store,
                "metric": "cosine", "neighbours": [{"rank": n.rank, "key": n.key, "index": n.index,
                                                   "cosine": round(n.score, 6), "distance": round(n.distance, 6),
                                                   "caption": n.caption} for n in self.neighbours]}


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
          teacher_plugin: str | None = None) -> QueryResult:
    """The k nearest indexed samples to one key, image file or text. `teacher_plugin` (module.path:Class):
    the plug-in teacher the user trusts, when the store's provenance names one (image and text queries)."""
    given = [name for name, v in (("--key", key), ("--image", image), ("--text", text)) if v is not None]
    if len(given) != 1:
        got = f" (got {', '.join(given)})" if given else ""
        raise UserError(f"give exactly one of --key, --image or --text{got}")
    if k < 1:
        raise UserError(f"-k {k}: ask for at least one neighbour")
    loaded = load_index(index_dir)  # a damaged file: one line (UserError)
    info = {**loaded.info, "path": str(Path(index_dir))}
    labels = open_store(info, store)
    teacher, name = info["teacher"], info["field"].split("/", 1)[1]
    view, own = None, None
    if key is not None:
        own = labels.index_of(key)
        vector = stored_vector(labels, teacher, name, own, key)
        kind, value = "key", key
    elif image is not None:
        vector, view = image_vector(labels, info, Path(image), device, teacher_plugin)
        kind, value = "image", str(image)
    else:
        vector = text_vector(labels, info, text, device, teacher_plugin)
        kind, value = "text", text
    neighbours = search(loaded, labels, vector, k, exclude=own)
    return QueryResult(kind, value, neighbours, info, labels.uri, own, view)


def search(loaded: LoadedIndex, labels: LabelStore, vector: np.ndarray, k: int,
           exclude: int | None = None) -> list[Neighbour]:
    """Top-k neighbours of one raw vector; `exclude` (a sample index) is left out."""
    unit, good = normalise(np.asarray(vector, np.float32).reshape(1, -1))
    if not good.all():
        raise UserError("the query gives a zero (or non-finite) vector: nothing to compare")
    dim = loaded.info["dim"]
    if unit.shape[1] != dim:
        raise UserError(f"the query vector has {unit.shape[1]} dimensions, the index {dim}")
    scores, found = loaded.search(unit, k + (exclude is not None))
    neighbours = []
    for score, fid in zip(scores[0], found[0]):
        if fid < 0 or int(loaded.ids[fid]) == exclude or len(neighbours) == k:
            continue
        i = int(loaded.ids[fid])
        neighbours.append(Neighbour(len(neighbours) + 1, str(loaded.keys[fid]), i, float(score),
                                    caption_of(labels, i)))
    return neighbours


def caption_of(labels: LabelStore, i: int) -> str:
    """The corpus's own caption, else the captioner teacher's best one marked "(generated)", else ""."""
    caption = str(labels.read("caption", i))
    if not caption and "captioner" in labels.teachers() and bool(labels.read("captioner/ok", i)):
        captions = labels.read("captioner/captions", i).ravel()
        caption = f"{captions[0]} (generated)" if len(captions) and str(captions[0]) else ""
    return caption


# ---------------------------------------------------------------------------- the query vector
def stored_vector(labels: LabelStore, teacher: str, name: str, i: int, key: str) -> np.ndarray:
    if not bool(labels.read(f"{teacher}/ok", i)):
        raise UserError(f"sample {key!r} has no {teacher} labels (it failed or is not labelled yet; "
                        f"see `omnimill status {labels.uri}`)")
    vector = labels.read(f"{teacher}/{name}", i).astype(np.float32)
    if not np.isfinite(vector).all() or not np.any(vector):
        raise UserError(f"sample {key!r} has a zero {teacher}/{name} vector (e.g. no caption to embed): "
                        "nothing to compare")
    return vector


def trusted_teacher(labels: LabelStore, teacher: str, plugin: str | None = None) -> str:
    """The teacher class the store's provenance names (a built-in name or module:Class), if it may be imported:
    a registered built-in, a plug-in installed for omnimill (entry point `omnimill.teachers`), or the plug-in
    the user named on the command line. Checked before any import: a store is data, and importing a module it
    names would run that module's code (the same rule as labelers.registry.stored_teacher)."""
    from omnimill.labelers.registry import BUILTIN, installed_plugins

    name = str(labels.provenance(teacher).get("spec") or teacher).partition("=")[0]
    plugins = installed_plugins()
    if name in BUILTIN or name in BUILTIN.values() or name in plugins.values():
        return name
    if plugin is None:
        raise UserError(f"{teacher} in {labels.uri} was labelled by {name!r}, not a built-in teacher, and a store "
                        f"cannot choose code to import; if you trust it, add --teacher-plugin {name!r}, or query "
                        "by --key")
    if plugin != name:
        raise UserError(f"--teacher-plugin {plugin!r} does not match the teacher that labelled {teacher} in "
                        f"{labels.uri}, {name!r}")
    return name


def rebuild_teacher(labels: LabelStore, teacher: str, device: str = "auto", plugin: str | None = None):
    """The teacher that labelled the store, rebuilt from its provenance and loaded; refused if it changed."""
    from omnimill.labelers.base import TeacherSpec
    from omnimill.labelers.registry import build

    provenance = labels.provenance(teacher)
    name = trusted_teacher(labels, teacher, plugin)
    checkpoint = provenance.get("checkpoint_path") or provenance.get("checkpoint")
    stored = provenance.get("config") or {}
    spec = TeacherSpec(name, checkpoint)
    built = build(spec, labels.view_size)
    # Options given through the Python API show up in the config only: pass back what differs.
    differs = {k: v for k, v in stored.items() if _plain(built.config()).get(k) != v}
    if differs:
        spec = TeacherSpec(name, checkpoint, {k: v for k, v in differs.items() if k != "version"})
        built = build(spec, labels.view_size)
        now = _plain(built.config())
        differs = {k: (now.get(k), v) for k, v in stored.items() if now.get(k) != v}
    if differs:
        what = "; ".join(f"{k}: {now!r} now, {then!r} in the store" for k, (now, then) in list(differs.items())[:3])
        raise UserError(f"teacher {teacher} rebuilt from the store's provenance differs from the one that "
                        f"labelled it ({what}); query by --key instead")
    sha = provenance.get("checkpoint_sha256")
    if sha and built.provenance().get("checkpoint_sha256") != sha:
        raise UserError(f"the checkpoint of {teacher} at {checkpoint} changed since the store was labelled "
                        "(sha256 differs); query by --key, or relabel")
    built.load(device, "auto")
    return built


def _plain(config: dict) -> dict:
    """As stored in Zarr attributes (JSON): tuples become lists."""
    return json.loads(json.dumps(config, default=str))


def image_vector(labels: LabelStore, info: dict, path: Path, device: str,
                 plugin: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The field's vector for an image file: its canonical view through the field's teacher."""
    from omnimill.labelers.base import Batch
    from omnimill.corpus.image import decode_view

    if not path.is_file():
        raise UserError(f"--image {path}: no such file")
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


def text_teachers() -> list[str]:
    """Built-in teachers whose text embeddings share their field's space (they have `embed_text`)."""
    from omnimill.labelers.registry import available, teacher_class

    found = []
    for name in available():
        try:
            if hasattr(teacher_class(name), "embed_text"):
                found.append(name)
        except UserError:  # a teacher whose module cannot be imported here
            continue
    return found
