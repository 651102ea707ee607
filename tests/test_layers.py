"""Imports point down: lathe.core (ground floor) <- components <- lathe.pipelines (the roof).

Read from the source with ``ast`` (every import, including those inside functions), so a
violation fails here before it becomes a circle somewhere else.
"""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
GROUND = "core"
COMPONENTS = ("data", "tokenizer", "training", "eval", "serving", "deploy")
ROOF = "pipelines"
# Run where lathe is not installed (copied into Triton model repositories; the sandbox's
# fork server, under the sandbox's own interpreter): they import no lathe module, except
# each other under the names they are copied as.
STANDALONE = (
    "serving/engine.py",
    "serving/triton_model.py",
    "serving/protocol.py",
    "core/fim.py",
    "core/quant.py",
    "eval/sandbox_worker.py",
)
STANDALONE_IMPORTS = ("lathe.serving.protocol", "lathe.core.fim", "lathe.core.quant")


def lathe_imports(path: Path, root: Path = REPO) -> list[str]:
    """Every ``lathe.*`` module a file imports (relative imports resolved against its package)."""
    package = ["lathe", *path.relative_to(root).parent.parts]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [a.name for a in node.names if a.name.split(".")[0] == "lathe"]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package[: len(package) - node.level + 1] + ([node.module] if node.module else []))
            if base.split(".")[0] == "lathe":
                # `from . import protocol` imports the module lathe.<pkg>.protocol
                found += [f"{base}.{a.name}" for a in node.names] if node.module is None else [base]
    return found


def layer(module: str) -> str:
    """lathe.<folder>.x -> <folder>."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def violations(root: Path) -> list[str]:
    """Every import in the tree at ``root`` that points up, sideways into a stage module, or round a circle."""
    found: list[str] = []
    edges: dict[str, set[str]] = {c: set() for c in COMPONENTS}
    for folder in (GROUND, *COMPONENTS):
        for path in sorted((root / folder).rglob("*.py")):
            where = str(path.relative_to(root))
            for module in lathe_imports(path, root):
                target = layer(module)
                if folder == GROUND and target != GROUND:
                    found.append(f"{where}: the ground floor imports {module}")
                elif target == ROOF:
                    found.append(f"{where}: a component imports the roof ({module})")
                elif target in COMPONENTS and target != folder:
                    edges[folder].add(target)
                    if module.endswith(".stage"):
                        found.append(f"{where}: imports another component's stage module {module}")
                if where in STANDALONE and module not in STANDALONE_IMPORTS:
                    found.append(f"{where}: runs without lathe installed but imports {module}")

    def reaches(start: str, goal: str, seen: frozenset[str]) -> bool:
        return any(n == goal or (n not in seen and reaches(n, goal, seen | {n})) for n in edges[start])

    found += [f"{c}: its imports lead back to it (a circle)" for c in COMPONENTS if reaches(c, c, frozenset())]
    return found + file_circles(root)


def module_file(module: str, root: Path) -> Path | None:
    """The file that defines ``lathe.<folder>.<rest>`` in the tree at ``root`` (a module or a package's
    ``__init__``); None when no file does (a name defined inside a module)."""
    parts = module.split(".")[1:]
    for candidate in (root.joinpath(*parts).with_suffix(".py"), root.joinpath(*parts, "__init__.py")):
        if parts and candidate.is_file():
            return candidate
    return None


def imported_files(path: Path, root: Path) -> set[Path]:
    """The lathe files ``path`` imports: ``from lathe.a.b import c`` is lathe/a/b/c.py when c is a module,
    else the module (or package) c is defined in."""
    package = ["lathe", *path.relative_to(root).parent.parts]
    found: set[Path | None] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {module_file(a.name, root) for a in node.names if a.name.split(".")[0] == "lathe"}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package[: len(package) - node.level + 1] + ([node.module] if node.module else []))
            if base.split(".")[0] == "lathe":
                found |= {module_file(f"{base}.{a.name}", root) or module_file(base, root) for a in node.names}
    return {f for f in found if f is not None and f != path}


def file_circles(root: Path) -> list[str]:
    """Every circle of imports between files (imports inside functions included): one line per circle,
    naming its files from the alphabetically first, so a circle is reported once."""
    graph = {
        str(path.relative_to(root)): {str(f.relative_to(root)) for f in imported_files(path, root)}
        for folder in (GROUND, *COMPONENTS, ROOF)
        for path in sorted((root / folder).rglob("*.py"))
    }
    circles: set[tuple[str, ...]] = set()

    def walk(node: str, trail: list[str]) -> None:
        for nxt in sorted(graph.get(node, ())):
            if nxt == trail[0]:
                start = trail.index(min(trail))
                circles.add(tuple(trail[start:] + trail[:start]))
            elif nxt not in trail and nxt > trail[0]:  # each circle is found from its first file only
                walk(nxt, trail + [nxt])

    for start in sorted(graph):
        walk(start, [start])
    return [" -> ".join((*c, c[0])) + ": a circle of imports between files" for c in sorted(circles)]


def test_imports_only_point_down() -> None:
    assert violations(REPO) == []


def test_the_check_finds_each_kind_of_violation(tmp_path: Path) -> None:
    def plant(relative: str, text: str) -> None:
        path = tmp_path / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)

    plant("core/stage.py", "from lathe.data.config import DataConfig\n")
    plant("eval/gate.py", "def f():\n    from lathe.pipelines.config import LatheConfig\n")  # inside a function too
    plant("serving/stage.py", "from lathe.eval.stage import EVAL\n")
    plant("eval/x.py", "from lathe.serving import package\n")  # eval -> serving -> eval: a circle
    plant("serving/engine.py", "from . import protocol\nfrom lathe.core import errors\n")
    # within one component: a.py -> b.py (at the top) -> a.py (inside a function), as stage.py and sweep.py were
    plant("training/a.py", "from lathe.training.b import f\n")
    plant("training/b.py", "def f():\n    from lathe.training import a\n")
    found = violations(tmp_path)
    assert found == [
        "core/stage.py: the ground floor imports lathe.data.config",
        "eval/gate.py: a component imports the roof (lathe.pipelines.config)",
        "serving/engine.py: runs without lathe installed but imports lathe.core",
        "serving/stage.py: imports another component's stage module lathe.eval.stage",
        "eval: its imports lead back to it (a circle)",
        "serving: its imports lead back to it (a circle)",
        "training/a.py -> training/b.py -> training/a.py: a circle of imports between files",
    ]


def test_site_packages_gets_one_top_level_package() -> None:
    """The distribution installs under `lathe` only: no bare `data`, `eval` or `tokenizer` in site-packages."""
    import tomllib

    import lathe.data

    setuptools = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert {p.split(".")[0] for p in setuptools["packages"]} == {"lathe"}
    assert {layer(p) for p in setuptools["packages"]} == {GROUND, ROOF, *COMPONENTS}
    # the list is checked against the tree: every folder with an __init__.py ships, under its own name
    tree = {
        "lathe." + ".".join(init.parent.relative_to(REPO).parts): str(init.parent.relative_to(REPO))
        for folder in (GROUND, *COMPONENTS, ROOF)
        for init in (REPO / folder).rglob("__init__.py")
    }
    assert sorted(setuptools["packages"]) == sorted(tree)
    assert setuptools["package-dir"] == tree
    assert Path(lathe.data.__file__).resolve().parent == REPO / "data"
