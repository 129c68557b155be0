"""`omnimill shards export|verify`: token shards for trainers, and checks that they are whole.

`omnimill shards text` is registered on this app by omnimill/cli.py: it runs a tokenizer (a unit job in
engine/text.py), and shards/ knows no models."""

from __future__ import annotations

import json
from typing import Annotated, Optional

import typer
from rich.console import Console

from omnimill.errors import UserError, fail

shards_app = typer.Typer(help="Export, verify and build token shards.", no_args_is_help=True)
console = Console()
FORCE_HELP = ("Redo an export in OUT: removes only what an earlier export wrote (shard-*.tar, shard-*.idx.npz, "
              "manifest.json, _export/); other files stay.")


@shards_app.command("export")
def export(
    tokens: Annotated[str, typer.Argument(help="Token store (made by `omnimill tokenize`), path or fsspec URL.")],
    out: Annotated[str, typer.Argument(help="Folder (or fsspec URL) for the shards and manifest.json.")],
    format: Annotated[str, typer.Option("--format", help="wds (omnimill's WebDataset tars) or 4m (tars, "
                                                         "data_config.yaml and manifest that apple/ml-4m's "
                                                         "trainer reads; docs/SHARDS.md).")] = "wds",
    samples_per_shard: Annotated[int, typer.Option(help="Samples per tar; about 1000-10000 for training, "
                                                        "and at least ranks x workers shards.")] = 1000,
    modality: Annotated[list[str], typer.Option("--modality", "-m", help="Export only these (repeatable); 4m: ml-4m "
                                                                        "domains or token-store modalities.")] = [],
    force: Annotated[bool, typer.Option(help=FORCE_HELP)] = False,
    allow_shapes: Annotated[bool, typer.Option(help="4m: write token domains whose length or vocabulary differ "
                                                    "from ml-4m's (tiny test tokenizers); recorded as warnings "
                                                    "in the manifest.")] = False,
    labels: Annotated[Optional[str], typer.Option(help="4m: the label store, when it is no longer where the token "
                                                       "store records it (checked by identity).")] = None,
):
    """Write a token store as WebDataset tars plus a manifest (counts, vocabularies, tokenizer hashes, sha256);
    with --format 4m, as shards and a data config for apple/ml-4m's trainer."""
    from omnimill.shards.wds import export_wds

    if format not in ("wds", "4m"):
        fail(f"--format must be wds or 4m, not {format!r}")
    if format == "4m":
        export_fourm(tokens, out, samples_per_shard, modality, force, allow_shapes, labels)
        return
    if allow_shapes or labels:
        fail("--allow-shapes and --labels apply to --format 4m only")
    try:
        manifest = export_wds(tokens, out, samples_per_shard, modality or None, force)
    except UserError as e:
        fail(str(e))
    size = sum(s["bytes"] for s in manifest["shards"]) / 1e6
    named = [f"{m} ({info['time']['steps']} {info['time']['of'].replace('_', ' ')})" if info.get("time") else m
             for m, info in manifest["modalities"].items()]  # a time axis said beside its modality
    console.print(f"{manifest['n']} samples, {len(manifest['shards'])} shards ({size:.1f} MB), modalities "
                  f"{', '.join(named)} -> {out}", highlight=False)


def export_fourm(tokens: str, out: str, samples_per_shard: int, modality: list[str], force: bool,
                 allow_shapes: bool, labels: str | None = None) -> None:
    from omnimill.shards.fourm import CONFIG, export_4m

    try:
        manifest = export_4m(tokens, out, samples_per_shard, modality or None, force, allow_shapes,
                             labels_uri=labels)
    except UserError as e:
        fail(str(e))
    for warning in manifest["warnings"]:
        console.print(f"[yellow]warning:[/yellow] {warning}", highlight=False, soft_wrap=True)
    shards = [s for d in manifest["datasets"].values() for s in d["shards"]]
    size = sum(s["bytes"] for s in shards) / 1e6
    left = sum(manifest["left_out"].values())
    console.print(f"{manifest['n']} samples ({left} left out) in {len(manifest['datasets'])} datasets, "
                  f"{len(shards)} shards ({size:.1f} MB), domains {', '.join(manifest['domains'])} -> {out}; "
                  f"ml-4m data config: {out.rstrip('/')}/{CONFIG}", highlight=False, soft_wrap=True)


@shards_app.command("verify")
def verify(
    path: Annotated[str, typer.Argument(help="Token store or shard set (folder with manifest.json).")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
    max_problems: Annotated[int, typer.Option(help="Report at most this many problems.")] = 100,
):
    """Check alignment, counts, checksums and vocabularies; exit 1 and name shard and sample on damage."""
    from omnimill.shards.verify import check_exists
    from omnimill.shards.verify import verify as run_verify
    from omnimill.paths import positive

    try:
        positive("--max-problems", max_problems)  # 0 would print "ok" for a damaged set
        check_exists(path)
        if _is_interleaved(path):
            return _verify_interleaved(path, as_json, max_problems)
        report = run_verify(path, max_problems=max_problems)
    except UserError as e:
        fail(str(e))
    if as_json:
        print(json.dumps(report, indent=1))
    else:
        what = f"{report['kind']} {path}: {report['samples']} samples, {report['units']} units, " \
               f"modalities {', '.join(report['modalities'])}"
        if not report["problems"]:
            console.print(f"[green]ok[/green] {what}", highlight=False)
        else:
            console.print(f"[red]damaged[/red] {what}; {len(report['problems'])} problems:", highlight=False)
            for p in report["problems"]:
                where = p["where"] if p["key"] == "-" else f"{p['where']}: sample {p['key']}"
                console.print(f"  {where}: {p['reason']}", highlight=False, soft_wrap=True)
    raise typer.Exit(1 if report["problems"] else 0)


def _is_interleaved(path: str) -> bool:
    from omnimill.shards.interleave import read_manifest

    try:
        read_manifest(path)
        return True
    except UserError:
        return False


def _verify_interleaved(path: str, as_json: bool, max_problems: int) -> None:
    """A packed interleaved set (omnimill.interleaved/1): every shard against its manifest."""
    from omnimill.shards.interleave import verify_interleaved

    report = verify_interleaved(path)
    problems = report["problems"]
    if as_json:
        print(json.dumps({"kind": "interleaved shard set", **report}, indent=1))
    elif not problems:
        console.print(f"[green]ok[/green] interleaved shard set {path}: {report['n']} sequences, "
                      f"{report['shards']} shards", highlight=False)
    else:
        console.print(f"[red]damaged[/red] interleaved shard set {path}; {len(problems)} problems:", highlight=False)
        for p in problems[:max_problems]:
            console.print(f"  {p}", highlight=False, soft_wrap=True, markup=False)
    raise typer.Exit(1 if problems else 0)
