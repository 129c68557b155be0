"""The teacher that labelled a store, rebuilt from the store's provenance: what a reader needs to put new
inputs in the space of stored outputs (the auditor's image and text queries, the documents' CLIP filter).

    provenance (spec, checkpoint path, config, checkpoint sha256) ──trusted?──▶ build ──same config and
        checkpoint sha256 as when it labelled?──▶ load

A store is data: `trusted_teacher` imports a class only if it is a built-in, a plug-in installed for omnimill
(entry point `omnimill.teachers`) or the plug-in the user names (the rule of `registry.stored_teacher`).
`labels` is any object with `uri`, `view_size` and `provenance(teacher)` (store.labels.LabelStore): labelers
know no store. `instead` ends each refusal with what the caller's user can do without the rebuilt teacher.
"""

from __future__ import annotations

import json

from omnimill.errors import UserError


def trusted_teacher(labels, teacher: str, plugin: str | None = None, instead: str = "query by --key") -> str:
    """The teacher class the store's provenance names (a built-in name or module:Class), if it may be imported:
    a registered built-in, a plug-in installed for omnimill, or the plug-in the user named (`plugin`).
    Checked before any import: importing a module a store names would run that module's code."""
    from omnimill.labelers.registry import BUILTIN, installed_plugins

    name = str(labels.provenance(teacher).get("spec") or teacher).partition("=")[0]
    plugins = installed_plugins()
    if name in BUILTIN or name in BUILTIN.values() or name in plugins.values():
        return name
    if plugin is None:
        raise UserError(f"{teacher} in {labels.uri} was labelled by {name!r}, not a built-in teacher, and a store "
                        f"cannot choose code to import; if you trust it, add --teacher-plugin {name!r}, or {instead}")
    if plugin != name:
        raise UserError(f"--teacher-plugin {plugin!r} does not match the teacher that labelled {teacher} in "
                        f"{labels.uri}, {name!r}")
    return name


def rebuild_teacher(labels, teacher: str, device: str = "auto", plugin: str | None = None,
                    instead: str = "query by --key"):
    """The teacher that labelled the store, rebuilt from its provenance and loaded; refused (UserError) if its
    config or its checkpoint's sha256 is not what the store recorded."""
    from omnimill.labelers.base import TeacherSpec
    from omnimill.labelers.registry import build

    provenance = labels.provenance(teacher)
    name = trusted_teacher(labels, teacher, plugin, instead)
    checkpoint = provenance.get("checkpoint_path") or provenance.get("checkpoint")
    stored = provenance.get("config") or {}
    built = build(TeacherSpec(name, checkpoint), labels.view_size)
    # Options given through the Python API show up in the config only: pass back those that differ (any
    # other difference, as a checkpoint's image size, is refused below).
    options = {k: v for k, v in stored.items() if k in type(built).options and plain(built.config()).get(k) != v}
    if options:
        built = build(TeacherSpec(name, checkpoint, options), labels.view_size)
    now = plain(built.config())
    differs = {k: (now.get(k), v) for k, v in stored.items() if now.get(k) != v}
    if differs:
        what = "; ".join(f"{k}: {now!r} now, {then!r} in the store" for k, (now, then) in list(differs.items())[:3])
        raise UserError(f"teacher {teacher} rebuilt from the store's provenance differs from the one that "
                        f"labelled it ({what}); {instead} instead")
    sha = provenance.get("checkpoint_sha256")
    if sha and built.provenance().get("checkpoint_sha256") != sha:
        raise UserError(f"the checkpoint of {teacher} at {checkpoint} changed since the store was labelled "
                        f"(sha256 differs); {instead}, or relabel")
    built.load(device, "auto")
    return built


def plain(config: dict) -> dict:
    """As stored in Zarr attributes (JSON): tuples become lists."""
    return json.loads(json.dumps(config, default=str))
