"""The layout shows the architecture: every module is documented, and no module-level import cycle."""
from __future__ import annotations

import ast
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
