"""omnimill: a data engine for omni-modal pretraining.

corpus --label--> labels.zarr --tokenize--> tokens.zarr --export--> shards --train--> checkpoints,
and a FAISS auditor over the labels. Every CLI verb is also a function here.
"""

__version__ = "0.1.0"


def label(*args, **kwargs):
    """Label a corpus into a Zarr label store (see `omnimill.engine.label.label`)."""
    from omnimill.engine.label import label as _label

    return _label(*args, **kwargs)


def status(store, **kwargs):
    """Per-teacher progress, errors and provenance of a label store."""
    from omnimill.store.labels import LabelStore

    return LabelStore.open(store, **kwargs).status()
