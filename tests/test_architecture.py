"""The shape of the house (docs/ARCHITECTURE.md, ../DESIGN.md): imports point one way.

    cli ──▶ jobs (engine, tokenize, train, audit) ──▶ labelers / corpus / store / shards ──▶ leaves

Every module of omnimill is read with `ast` (every import, also those inside functions: a lazy import
is still a dependency) and each rule below fails with the full list of its present offenders, one
`file:line` each, so a failing run says exactly what is left to move.

    packages   cli (cli.py, __main__.py, and the package root's API functions), engine, labelers, corpus,
               store, shards, tokenize, train, audit
    leaves     the top-level modules (errors.py, files.py, faults.py, ...) and the root's `__version__`:
               they import no package

Rules: no cycle between packages; no private name (`_x`) imported from another package; labelers/
never imports Dask or Zarr (and importing it loads neither); every import follows ALLOWED; nothing
outside store/ imports zarr or touches a store's Zarr group.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent / "omnimill"
JOBS = {"engine", "tokenize", "train", "audit"}
BOTTOM = {"labelers", "corpus", "store", "shards"}
PACKAGES = {"cli", *JOBS, *BOTTOM}
LEAF = "leaf"

# Who may import whom, besides itself and the leaves. A job uses another job only where it runs that job's
# product: the tokenize unit job runs tokenizers; generate decodes tokens and draws them with audit's renderers.
ALLOWED = {
    "cli": PACKAGES - {"cli"},
    "engine": {"tokenize", *BOTTOM},
    "tokenize": set(BOTTOM),
    "train": {"tokenize", "audit", *BOTTOM},
    "audit": set(BOTTOM),
    "labelers": {"corpus"},  # a teacher sees what a sample kind decodes
    "store": {"corpus"},  # the label store is made from a corpus listing
    "shards": {"store", "corpus"},  # formats of the token store's contents; fsspec paths as the corpus reads them
    "corpus": set(),
}
NOT_IN_LABELERS = ("dask", "distributed", "zarr")  # teachers run anywhere: no cluster, no store


@dataclass(frozen=True)
class Import:
    source: str  # importing module, dotted
    target: str  # imported module, dotted (a name imported from a module counts as that module)
    names: tuple[str, ...]  # names taken from `target` (from-imports), else ()
    line: int
    bound: str = ""  # the name the module `target` is bound to in the file (`import a.b as c`, `from a import b`)
    file: str = ""  # the importing file, relative to the repository

    @property
    def where(self) -> str:
        return f"{self.file}:{self.line}"


def relative(path: Path) -> str:
    return str(path.relative_to(ROOT.parent)) if path.is_relative_to(ROOT.parent) else path.name


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def is_module(dotted: str) -> bool:
    path = ROOT.parent.joinpath(*dotted.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def imports_of(path: Path, source: str | None = None) -> list[Import]:
    """Every import in the file, wherever it sits; `from a import b` names module a.b when b is a module.
    `source`: the file's dotted name (by default from its place in the package)."""
    source = source or module_name(path)
    package = source if path.name == "__init__.py" else source.rpartition(".")[0]
    found = []
    file = relative(path)
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [Import(source, alias.name, (), node.lineno, alias.asname or "", file) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolve against the importing package
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([node.module] if node.module else [])])
            names = tuple(a.name for a in node.names if not is_module(f"{base}.{a.name}"))
            found += [Import(source, f"{base}.{a.name}", (), node.lineno, a.asname or a.name, file) for a in node.names
                      if is_module(f"{base}.{a.name}")]
            found += [Import(source, base, names, node.lineno, "", file)] if names else []
    return found


def all_imports() -> list[Import]:
    return [i for path in sorted(ROOT.rglob("*.py")) for i in imports_of(path)]


def package_of(module: str, names: tuple[str, ...] = ()) -> str | None:
    """The package a module belongs to; None outside omnimill. The root is two things: its `__version__`
    (a leaf that stores record) and the Python API's functions, which call jobs like the CLI does."""
    parts = module.split(".")
    if parts[0] != "omnimill":
        return None
    if len(parts) == 1:
        return LEAF if names == ("__version__",) else "cli"
    if parts[1] in PACKAGES - {"cli"}:
        return parts[1]
    if parts[1] in ("cli", "__main__", "fetch_cli", "documents_cli"):
        return "cli"
    return LEAF  # a top-level module: errors, files, faults, ...


def private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def private_attributes(path: Path, source: str | None = None) -> list[str]:
    """`render._figure` where `render` is a module of another omnimill package: a private name all the same."""
    source = source or module_name(path)
    modules = {i.bound: i.target for i in imports_of(path, source) if i.bound and package_of(i.target) not in
               (None, package_of(source))}
    return [f"{relative(path)}:{node.lineno}: {source} takes {node.attr} from {modules[node.value.id]}"
            for node in ast.walk(ast.parse(path.read_text())) if isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name) and node.value.id in modules and private(node.attr)]


def internal(imports: list[Import]) -> list[tuple[Import, str, str]]:
    """(import, from package, to package) for imports between two different packages of omnimill."""
    edges = []
    for i in imports:
        to = package_of(i.target, i.names)
        frm = package_of(i.source)
        if to is not None and to != frm:
            edges.append((i, frm, to))
    return edges


def listing(title: str, offenders: list[str]) -> str:
    return f"{title}: {len(offenders)} present offender(s)\n" + "\n".join(f"  OFFENDER {o}" for o in offenders)


def shortest_cycle(graph: dict[str, set[str]], start: str) -> list[str] | None:
    """The shortest path from `start` back to itself (breadth-first), or None."""
    paths, frontier = {start: [start]}, [start]
    while frontier:
        reached = []
        for node in frontier:
            for to in sorted(graph.get(node, ())):
                if to == start:
                    return paths[node] + [start]
                if to not in paths:
                    paths[to] = paths[node] + [to]
                    reached.append(to)
        frontier = reached
    return None


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One shortest cycle through each package that lies on one (a cycle found twice is listed once)."""
    cycles = []
    for start in sorted(graph):
        cycle = shortest_cycle(graph, start)
        if cycle and set(cycle) not in [set(c) for c in cycles]:
            cycles.append(cycle)
    return cycles


# ---------------------------------------------------------------------------- the rules
def test_no_cycle_between_packages():
    edges = internal(all_imports())
    graph: dict[str, set[str]] = {}
    for _, frm, to in edges:
        graph.setdefault(frm, set()).add(to)
    cycles = find_cycles(graph)
    on_cycle = {(a, b) for cycle in cycles for a, b in zip(cycle, cycle[1:])}
    offenders = [" -> ".join(cycle) for cycle in cycles]
    offenders += sorted({f"{frm} -> {to} at {i.where} (import {i.target})" for i, frm, to in edges
                         if (frm, to) in on_cycle})
    assert not offenders, listing("cycles between packages", offenders)


def test_no_private_name_from_another_package():
    offenders = [f"{i.where}: {i.source} takes {name} from {i.target}" for i, _, _ in internal(all_imports())
                 for name in i.names if private(name)]
    offenders += [f"{i.where}: {i.source} imports the private module {i.target}" for i, _, _ in internal(all_imports())
                  if any(private(part) for part in i.target.split("."))]
    offenders += [use for path in sorted(ROOT.rglob("*.py")) for use in private_attributes(path)]
    assert not offenders, listing("private names imported from another package", offenders)


def test_labelers_import_no_dask_or_zarr():
    offenders = [f"{i.where}: import {i.target}" for i in all_imports()
                 if i.source.startswith("omnimill.labelers") and i.target.split(".")[0] in NOT_IN_LABELERS]
    assert not offenders, listing("labelers/ importing Dask or Zarr", offenders)


def test_imports_point_one_way():
    offenders = [f"{i.where}: {frm} -> {to} (import {i.target}{' ' + ', '.join(i.names) if i.names else ''})"
                 for i, frm, to in internal(all_imports()) if LEAF not in (frm, to) and to not in ALLOWED[frm]]
    offenders += [f"{i.where}: a leaf imports {to} ({i.target})" for i, frm, to in internal(all_imports())
                  if frm == LEAF]
    assert not offenders, listing("imports pointing the wrong way (see ALLOWED)", offenders)


def test_only_store_touches_zarr():
    """Stores are read through their API (read, has, arrays, array_info, reader, attrs, created): outside
    store/ nothing imports zarr or reaches into a store's `.group` (`m.group(1)` of a regex is a call, not this)."""
    offenders = [f"{i.where}: import {i.target}" for i in all_imports()
                 if i.target.split(".")[0] == "zarr" and not i.source.startswith("omnimill.store")]
    for path in sorted(ROOT.rglob("*.py")):
        if path.is_relative_to(ROOT / "store"):
            continue
        text = path.read_text()
        tree = ast.parse(text)
        called = {id(node.func) for node in ast.walk(tree) if isinstance(node, ast.Call)}
        lines = sorted({node.lineno for node in ast.walk(tree)
                        if isinstance(node, ast.Attribute) and node.attr == "group" and id(node) not in called})
        offenders += [f"{relative(path)}:{line}: {text.splitlines()[line - 1].strip()}"
                      for line in lines]
    assert not offenders, listing("Zarr groups touched outside store/", offenders)


def test_importing_labelers_loads_no_dask_or_zarr():
    """Not only the labelers' own imports: nothing they pull in (corpus, the leaves, third parties) may load them."""
    modules = sorted(module_name(p) for p in (ROOT / "labelers").glob("*.py"))
    code = (f"import importlib, json, sys\nfor m in {modules!r}: importlib.import_module(m)\n"
            f"print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in {list(NOT_IN_LABELERS)!r})))")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT.parent, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    loaded = json.loads(run.stdout.strip().splitlines()[-1])
    assert not loaded, listing("modules loaded by importing omnimill.labelers and its modules",
                               sorted({m.split(".")[0] for m in loaded}))


# ---------------------------------------------------------------------------- the checker itself
def test_the_walk_sees_lazy_relative_and_from_imports(tmp_path):
    source = tmp_path / "m.py"
    source.write_text("from omnimill import faults\nfrom omnimill.store.base import _norm, now\n"
                      "def f():\n    import omnimill.engine.units\n    from omnimill import __version__\n"
                      "from . import wds\nfrom ..store.tokens import TokenStore\n")
    got = {(i.target, i.names) for i in imports_of(source, "omnimill.shards.m")}
    assert got == {("omnimill.faults", ()), ("omnimill.store.base", ("_norm", "now")),
                   ("omnimill.engine.units", ()), ("omnimill", ("__version__",)), ("omnimill.shards.wds", ()),
                   ("omnimill.store.tokens", ("TokenStore",))}
    source.write_text("from omnimill.audit import render\nimport omnimill.store.base as base\n"
                      "render._figure()\nbase._norm('x')\nrender.tile_png\n")
    assert [use.split(": ", 1)[1] for use in private_attributes(source, "omnimill.train.m")] == [
        "omnimill.train.m takes _figure from omnimill.audit.render", "omnimill.train.m takes _norm from omnimill.store.base"]
    assert package_of("omnimill", ("__version__",)) == LEAF and package_of("omnimill", ("label",)) == "cli"
    assert package_of("omnimill.errors") == LEAF and package_of("omnimill.cli") == "cli"
    assert find_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c", "a"]]
    assert find_cycles({"a": {"b"}, "b": {"a", "c"}, "c": {"b"}}) == [["a", "b", "a"], ["c", "b", "c"]]

