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


def test_no_module_level_import_cycle() -> None:
    modules = {_module(p): p for p in PKG.rglob("*.py")}
    graph = {m: {i for i in _imports(p) if i in modules and i != m} for m, p in modules.items()}
    # a package's __init__ importing its own submodules is how packages are built, not a cycle
    for m in graph:
        graph[m] = {i for i in graph[m] if not (modules[m].name == "__init__.py" and i.startswith(m + "."))}
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
             "api = families.get(t.family).api", 'x = registry.names("synthesis")',
             "if t.kind in grid.FAMILY_TITLES: pass", "pool = [s for s in sources if s.name in family]"]
    for source in facts:
        assert not family_branches(source, names), source
