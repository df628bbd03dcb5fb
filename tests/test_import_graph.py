"""The package's import graph: no cycles, no private names across modules, a short top level.

Every ``.py`` file under ``infoplane/`` and ``cli/`` (installed as ``infoplane.cli``) is parsed with :mod:`ast`;
every import counts, at module level or inside a function (a lazy import is still a dependency). A package's
``__init__`` depends on the modules it re-exports, so a submodule that imports a name from its own package's
``__init__`` closes a cycle. Private *modules* (``estimators/_cpu``, ``_native``, ``_version``) may be imported;
private *names* (one leading underscore, not dunder) of another module may not, neither through ``from m import
_x`` nor as ``m._x`` on a module object.
"""
from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SOURCES = (("infoplane", "infoplane"), ("cli", "infoplane.cli"))
MAX_TOP_LEVEL_MODULES = 8

def _modules() -> dict[str, Path]:
    """Dotted module name -> file, for every module of the package."""
    out = {}
    for folder, package in SOURCES:
        root = REPO / folder
        for path in sorted(root.rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join([package, *parts])] = path
    return out


MODULES = _modules()


def _is_private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def _scan(name: str, path: Path) -> tuple[set[str], list[tuple[str, str]]]:
    """The package modules ``name`` imports, and the ``(module, private name)`` pairs it takes from others."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    deps: set[str] = set()
    private: list[tuple[str, str]] = []
    aliases: dict[str, str] = {}  # local name bound to a package module -> that module

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name in MODULES:
                    deps.add(a.name)
                    if a.asname:
                        aliases[a.asname] = a.name
                    else:  # ``import infoplane.x.y`` binds ``infoplane``; attribute chains are resolved below
                        aliases.setdefault(a.name.split(".")[0], a.name.split(".")[0])
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            for a in node.names:
                child = f"{source}.{a.name}"
                if child in MODULES:  # ``from package import module``: a private module is allowed
                    deps.add(child)
                    aliases[a.asname or a.name] = child
                elif source in MODULES:  # a name defined (or re-exported) by ``source``: depends on ``source``
                    deps.add(source)
                    if _is_private(a.name):
                        private.append((source, a.name))

    def dotted(node: ast.AST) -> str | None:
        if isinstance(node, ast.Name):
            return aliases.get(node.id)
        if isinstance(node, ast.Attribute):
            head = dotted(node.value)
            return None if head is None else f"{head}.{node.attr}"
        return None

    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and _is_private(node.attr):
            owner = dotted(node.value)
            if owner in MODULES and owner != name and f"{owner}.{node.attr}" not in MODULES:
                private.append((owner, node.attr))
    deps.discard(name)
    return deps, private


GRAPH: dict[str, set[str]] = {}
PRIVATE: list[tuple[str, str, str]] = []
for _name, _path in MODULES.items():
    _deps, _private = _scan(_name, _path)
    GRAPH[_name] = _deps
    PRIVATE.extend((_name, owner, attr) for owner, attr in _private)


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []
    counter = 0
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            for child in children:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                    break
                if child in on_stack:
                    low[node] = min(low[node], index[child])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == node:
                            break
                    if len(component) > 1:
                        found.append(sorted(component))
    return found


def _a_cycle(component: list[str]) -> str:
    """One closed path through a strongly connected component, for the message."""
    members = set(component)
    path = [component[0]]
    while True:
        step = next(m for m in sorted(GRAPH[path[-1]]) if m in members)
        if step in path:
            return " -> ".join(path[path.index(step):] + [step])
        path.append(step)


def test_the_scan_sees_the_package():
    assert "infoplane.tracking.tracker" in MODULES and "infoplane.cli.main" in MODULES
    assert "infoplane.runs.reader" in GRAPH["infoplane.viz.stats"]
    assert "infoplane.tracking.tracker" in GRAPH["infoplane"]  # a package __init__ depends on what it re-exports


def test_the_scan_finds_cycles_and_private_names(tmp_path):
    # The checks themselves, on a made-up graph and a made-up module.
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []
    source = tmp_path / "probe.py"
    source.write_text("from infoplane.runs.format import _hidden, __version__\n"
                      "def f():\n"
                      "    from infoplane.viz import planes as P\n"
                      "    import infoplane.runs.reader\n"
                      "    return P._secret, infoplane.runs.reader._other, P.public\n")
    deps, private = _scan("infoplane.probe", source)
    assert {"infoplane.runs.format", "infoplane.viz.planes", "infoplane.runs.reader"} <= deps
    assert sorted(private) == [("infoplane.runs.format", "_hidden"), ("infoplane.runs.reader", "_other"),
                               ("infoplane.viz.planes", "_secret")]


def test_no_import_cycles():
    cycles = _cycles(GRAPH)
    assert not cycles, "import cycles:\n" + "\n".join(_a_cycle(c) for c in cycles)


def test_no_private_names_across_modules():
    bad = sorted(set(PRIVATE))
    assert not bad, "private names used from another module (give them a public name in the module that owns " \
                    "them):\n" + "\n".join(f"{m} uses {owner}.{attr}" for m, owner, attr in bad)


def test_top_level_stays_small():
    top = sorted(p.name for p in (REPO / "infoplane").glob("*.py") if p.name != "__init__.py")
    assert len(top) <= MAX_TOP_LEVEL_MODULES, (f"{len(top)} modules at the top of infoplane/ ({', '.join(top)}); "
                                               f"at most {MAX_TOP_LEVEL_MODULES}: put new ones in a subpackage")

