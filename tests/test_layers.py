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
STANDALONE = ("serving/engine.py", "serving/triton_model.py", "serving/protocol.py", "core/fim.py", "core/quant.py",
              "eval/sandbox_worker.py")
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
    return found


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
    found = violations(tmp_path)
    assert found == [
        "core/stage.py: the ground floor imports lathe.data.config",
        "eval/gate.py: a component imports the roof (lathe.pipelines.config)",
        "serving/engine.py: runs without lathe installed but imports lathe.core",
        "serving/stage.py: imports another component's stage module lathe.eval.stage",
        "eval: its imports lead back to it (a circle)",
        "serving: its imports lead back to it (a circle)",
    ]


def test_site_packages_gets_one_top_level_package() -> None:
    """The distribution installs under `lathe` only: no bare `data`, `eval` or `tokenizer` in site-packages."""
    import tomllib

    import lathe.data

    setuptools = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert {p.split(".")[0] for p in setuptools["packages"]} == {"lathe"}
    assert {layer(p) for p in setuptools["packages"]} == {GROUND, ROOF, *COMPONENTS}
    assert Path(lathe.data.__file__).resolve().parent == REPO / "data"
