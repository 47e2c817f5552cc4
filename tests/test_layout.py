"""The layout shows the architecture: every module is documented, and no module-level import cycle."""
from __future__ import annotations

import ast
import re
from pathlib import Path

PKG = Path(__file__).resolve().parent.parent / "galleryvis"
ARCHITECTURE = PKG.parent / "docs" / "architecture.md"


def _module(path: Path) -> str:
    parts = path.relative_to(PKG.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """galleryvis modules imported at module level (not inside functions or TYPE_CHECKING)."""
    name = _module(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    out = set()
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.startswith("galleryvis"):
                out.add(target)
                out.update(f"{target}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.startswith("galleryvis"))
    return out


def _parents(module: str) -> list[str]:
    """The packages below galleryvis that hold ``module``: galleryvis.a.b.c -> galleryvis.a, galleryvis.a.b."""
    parts = module.split(".")
    return [".".join(parts[:k]) for k in range(2, len(parts))]


def test_no_module_level_import_cycle() -> None:
    modules = {_module(p): p for p in PKG.rglob("*.py")}
    graph = {m: {i for i in _imports(p) if i in modules and i != m} for m, p in modules.items()}
    # a package's __init__ importing its own submodules is how packages are built, not a cycle
    for m in graph:
        graph[m] = {i for i in graph[m] if not (modules[m].name == "__init__.py" and i.startswith(m + "."))}
    # importing a.b.c from outside package a.b runs a.b's __init__ first (galleryvis's own is lazy)
    for m in graph:
        graph[m] |= {parent for i in set(graph[m]) for parent in _parents(i)
                     if parent in modules and parent != m and not m.startswith(parent + ".")}
    state: dict[str, int] = {}

    def visit(m: str, path: list[str]) -> None:
        state[m] = 1
        for n in sorted(graph[m]):
            assert state.get(n) != 1, f"import cycle: {' -> '.join(path + [m, n])}"
            if n not in state:
                visit(n, path + [m])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [])


def test_every_module_has_a_line_in_the_architecture_doc() -> None:
    text = ARCHITECTURE.read_text(encoding="utf-8")
    skip = {"__init__.py", "__main__.py"}
    for path in sorted(PKG.glob("*.py")):
        if path.name not in skip:
            assert f"`{path.name}`" in text, f"docs/architecture.md does not name {path.name}"
    for sub in sorted(p for p in PKG.iterdir() if (p / "__init__.py").is_file()):
        assert f"`{sub.name}/`" in text, f"docs/architecture.md does not name {sub.name}/"


_COMPARE_OPS = (ast.Eq, ast.NotEq, ast.In, ast.NotIn)


def _is_family(node: ast.AST) -> bool:
    """``tech.family``, ``job.family.name``: an attribute that holds a technique's family (a bare
    ``family`` variable may be another kind of family, a model source's say: it counts when
    compared with a string)."""
    if isinstance(node, ast.Attribute):
        return re.search(r"(^|_)family$", node.attr.lower()) is not None or _is_family(node.value)
    return False


def _is_string(node: ast.AST) -> bool:
    if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
        return any(_is_string(e) for e in node.elts)
    return isinstance(node, (ast.Constant, ast.JoinedStr)) and isinstance(getattr(node, "value", ""), str)


def _names_family(node: ast.AST, names: set[str]) -> bool:
    """A family's name as a string literal, alone or in a literal tuple, list or set."""
    if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
        return any(_names_family(e, names) for e in node.elts)
    return isinstance(node, ast.Constant) and node.value in names


def family_branches(source: str, names: set[str]) -> list[int]:
    """Lines of ``source`` that branch on a family's name: with ``==``, ``!=``, ``in`` or
    ``not in``, a technique's family compared with anything, a ``family`` variable compared
    with a string, or a family's name compared with anything; a loop over literal family names;
    a ``match`` on a family."""
    lines = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Compare) and any(isinstance(op, _COMPARE_OPS) for op in node.ops):
            operands = [node.left, *node.comparators]
            bare = any(isinstance(o, ast.Name) and o.id.lower().endswith("family") for o in operands)
            if any(_is_family(o) or _names_family(o, names) for o in operands) \
                    or (bare and any(_is_string(o) for o in operands)):
                lines.append(node.lineno)
        elif isinstance(node, (ast.For, ast.comprehension)) and _names_family(node.iter, names):
            lines.append(node.iter.lineno)
        elif isinstance(node, ast.Match) and (_is_family(node.subject) or isinstance(node.subject, ast.Name)
                                              and node.subject.id.lower().endswith("family")):
            lines.append(node.lineno)
    return lines


def test_no_module_but_families_branches_on_a_family_name() -> None:
    """What differs between technique families is a family's fact (galleryvis/families.py), so a
    new family is added there, not in every module that would otherwise test its name."""
    from galleryvis.families import FAMILIES

    names = set(FAMILIES)
    found = [f"{path.relative_to(PKG.parent)}:{line}" for path in sorted(PKG.rglob("*.py"))
             if path != PKG / "families.py"
             for line in family_branches(path.read_text(encoding="utf-8"), names)]
    assert not found, f"branches on a family name outside galleryvis/families.py: {', '.join(found)}"


def test_the_family_check_finds_each_kind_of_branch() -> None:
    names = {"attribution", "synthesis"}
    branches = ['if job.family == "synthesis": pass', 'x = tech.family != "attribution"',
                'y = [n for n, t in ts if t.family == family]', 'if j.family.name not in ("a", "b"): pass',
                'if family in ("a",): pass', 'ok = "b" != family', 'if kind == "synthesis": pass',
                'for f in ("attribution", "synthesis"): pass', 'z = {f: 1 for f in ["attribution"]}',
                'match tech.family:\n    case "x": pass', 'match family:\n    case "x": pass']
    for source in branches:
        assert family_branches(source, names), source
    facts = ["if job.family.scored: pass", "group = FAMILIES[t.family].title",
             "api = families.named(t.family).api", 'x = registry.names("synthesis")',
             "if t.kind in grid.FAMILY_TITLES: pass", "pool = [s for s in sources if s.name in family]"]
    for source in facts:
        assert not family_branches(source, names), source


# --- layers: each folder of the package is one layer of docs/architecture.md's picture ------------

#: The layers, lowest first: a module imports only from its own layer and the layers below it.
#: Top-level modules are named one by one; a folder is named by its name.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("vocabulary", ("errors", "tasks", "naming", "registry", "families")),
    ("storage", ("storage",)),
    ("site", ("render",)),
    ("objectives", ("targets",)),
    ("engine", ("engine", "hooks")),
    ("techniques", ("attribution", "synthesis")),
    ("metrics", ("metrics",)),
    ("model sources", ("sources",)),
    ("configuration", ("config",)),
    ("build stages", ("build",)),
    ("commands", ("cli", "__main__", "")),
]
_RANK = {part: rank for rank, (_, parts) in enumerate(LAYERS) for part in parts}
#: Layers that compute with torch: the configuration layer imports none of them.
COMPUTE_LAYERS = {"objectives", "engine", "techniques", "metrics"}


def _layer(module: str) -> int:
    parts = module.split(".")
    return _RANK[parts[1] if len(parts) > 1 else ""]


def _all_imports(path: Path) -> list[tuple[int, str]]:
    """(line, galleryvis module) of every import in ``path``, inside functions too; imports
    under ``if TYPE_CHECKING:`` are annotations, not dependencies. ``from galleryvis import
    __version__`` reads the package's version, which every layer may."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    typing_only = {id(n) for node in ast.walk(tree)
                   if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test) for n in ast.walk(node)}
    out = []
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.ImportFrom) and not node.level and (node.module or "").split(".")[0] == "galleryvis":
            for alias in node.names:
                full = f"{node.module}.{alias.name}"
                is_module = (PKG.parent / (full.replace(".", "/") + ".py")).is_file() \
                    or (PKG.parent / full.replace(".", "/")).is_dir()
                if not (node.module == "galleryvis" and alias.name == "__version__"):
                    out.append((node.lineno, full if is_module else node.module))
        elif isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names if a.name.split(".")[0] == "galleryvis"]
    return out


def test_every_module_belongs_to_a_layer() -> None:
    for path in PKG.rglob("*.py"):
        _layer(_module(path))  # a KeyError names a module outside every layer


def test_at_most_a_dozen_modules_at_the_top_of_the_package() -> None:
    top = sorted(p.name for p in PKG.glob("*.py"))
    assert len(top) <= 12, top


def test_package_imports_are_absolute() -> None:
    found = [f"{p.relative_to(PKG.parent)}:{n.lineno}" for p in sorted(PKG.rglob("*.py"))
             for n in ast.walk(ast.parse(p.read_text(encoding="utf-8"))) if isinstance(n, ast.ImportFrom) and n.level]
    assert not found, f"relative imports (the layer rules read absolute ones): {', '.join(found)}"


def test_nothing_imports_from_a_layer_above_it() -> None:
    found = []
    for path in sorted(PKG.rglob("*.py")):
        module = _module(path)
        for line, imported in _all_imports(path):
            if _layer(imported) > _layer(module):
                found.append(f"{path.relative_to(PKG.parent)}:{line} ({LAYERS[_layer(module)][0]}) imports "
                             f"{imported} ({LAYERS[_layer(imported)][0]})")
    assert not found, "\n".join(found)


def test_the_configuration_layer_imports_no_compute_module() -> None:
    for path in sorted((PKG / "config").rglob("*.py")):
        for line, imported in _all_imports(path):
            assert LAYERS[_layer(imported)][0] not in COMPUTE_LAYERS, f"{path.name}:{line} imports {imported}"


def _torch_after_importing(modules: list[str]) -> list[str]:
    import subprocess
    import sys

    code = "import sys\n" + "".join(f"import {m}\n" for m in modules) + \
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'torchvision')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    return ast.literal_eval(out.strip())


def test_the_site_and_configuration_layers_import_no_torch() -> None:
    modules = [_module(p) for folder in ("render", "config") for p in sorted((PKG / folder).rglob("*.py"))]
    modules += ["galleryvis.families", "galleryvis.registry", "galleryvis.tasks"]
    assert _torch_after_importing(modules) == []


def test_no_two_modules_share_a_name_and_no_two_define_the_same_public_name() -> None:
    """A name says what is inside: no ``attention.py`` beside ``attribution/attention.py``, no two
    classes called ``Job``, no three functions called ``fit`` (the command line's functions are
    named after its commands)."""
    files: dict[str, list[str]] = {}
    names: dict[str, list[str]] = {}
    for path in sorted(PKG.rglob("*.py")):
        rel = str(path.relative_to(PKG.parent))
        if path.name != "__init__.py":
            files.setdefault(path.name, []).append(rel)
        if path.name != "cli.py":
            for node in ast.parse(path.read_text(encoding="utf-8")).body:
                if isinstance(node, (ast.FunctionDef, ast.ClassDef)) and not node.name.startswith("_"):
                    names.setdefault(node.name, []).append(rel)
    assert not {k: v for k, v in files.items() if len(v) > 1}
    assert not {k: v for k, v in names.items() if len(v) > 1}
