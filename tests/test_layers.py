"""The layering of wheelbucket's modules: each imports only the layers below it.

Every ``import`` statement of every module is read with `ast`, those under
``if TYPE_CHECKING:`` included (a type-only import is still a seam that runs
upwards). A module may import modules of a lower layer only, never its own
layer or one above; the redis package may use only the core's public layer
and the helpers named for it, and its own modules form no cycle.
docs/design.md draws the same layers.
"""

from __future__ import annotations

import ast
import graphlib
from pathlib import Path

import pytest

import wheelbucket

PACKAGE = Path(wheelbucket.__file__).parent

# Bottom first. A module may import only from the layers before its own.
LAYERS: list[set[str]] = [
    {"_log", "errors", "clock", "wheel", "stats"},
    {"context"},
    {"_args", "task", "executor"},
    {"lifecycle", "pool", "_aio"},
    {"calls"},
    {"scheduler"},
    {"core"},
    {"bucket"},
    {"testing", "__init__"},
    {"__main__"},
]
# What the redis package may import from the core.
REDIS_MAY_IMPORT = {
    "_args",
    "_log",
    "bucket",
    "clock",
    "context",
    "errors",
    "executor",
    "stats",
    "task",
}
MAX_LINES = 600


def _module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE).with_suffix("")
    return ".".join(rel.parts)


def _modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def _imports(path: Path) -> set[str]:
    """The wheelbucket modules `path` imports, as dotted names under the package."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    here = _module_name(path).split(".")
    package = here[:-1]  # the package a relative import starts from
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name == "wheelbucket" or alias.name.startswith("wheelbucket."):
                    found.add(alias.name.removeprefix("wheelbucket").lstrip(".") or "__init__")
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - (node.level - 1)] if node.level > 1 else package
                target = [*base, *(node.module.split(".") if node.module else [])]
            elif node.module and (
                node.module == "wheelbucket" or node.module.startswith("wheelbucket.")
            ):
                target = node.module.split(".")[1:]
            else:
                continue
            if node.module is None:  # from . import x: a module, or a name of __init__
                for alias in node.names:
                    sub = [*target, alias.name]
                    is_module = PACKAGE.joinpath(*sub).with_suffix(".py").exists()
                    found.add(".".join(sub if is_module else target) or "__init__")
            else:
                found.add(".".join(target) or "__init__")
    return found


def _layer(name: str) -> int:
    for i, layer in enumerate(LAYERS):
        if name in layer:
            return i
    raise AssertionError(f"module {name!r} is in no layer: add it to LAYERS in {__file__}")


def _core_modules() -> list[Path]:
    return [p for p in _modules() if p.parent == PACKAGE]


@pytest.mark.parametrize("path", _core_modules(), ids=lambda p: p.name)
def test_a_core_module_imports_only_lower_layers(path: Path) -> None:
    name = _module_name(path)
    mine = _layer(name)
    for imported in sorted(_imports(path)):
        top = imported.split(".")[0]
        if top == "redis":
            raise AssertionError(f"{name} imports the redis package, which sits above the core")
        assert _layer(top) < mine, (
            f"{name} (layer {mine}) imports {top} (layer {_layer(top)}): "
            "a module may import only the layers below its own"
        )


def test_the_redis_package_uses_only_the_public_core_and_has_no_cycle() -> None:
    graph: dict[str, set[str]] = {}
    for path in _modules():
        name = _module_name(path)
        if not name.startswith("redis"):
            continue
        inside: set[str] = set()
        for imported in _imports(path):
            if imported.startswith("redis"):
                if imported != "redis":
                    inside.add(imported)
            else:
                assert imported in REDIS_MAY_IMPORT or imported == "__init__", (
                    f"{name} imports wheelbucket.{imported}: the redis package may use only "
                    f"{sorted(REDIS_MAY_IMPORT)}"
                )
        graph[name] = inside
    assert "redis.shared" in graph, sorted(graph)
    graphlib.TopologicalSorter(graph).prepare()  # raises CycleError on a cycle


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_module_is_over_the_size_limit(path: Path) -> None:
    lines = len(path.read_text(encoding="utf-8").splitlines())
    assert lines <= MAX_LINES, f"{path.name} has {lines} lines (at most {MAX_LINES})"


def test_the_reader_sees_type_only_imports() -> None:
    # The check is only as good as the reader: an import under TYPE_CHECKING counts.
    sample = PACKAGE / "testing.py"
    assert "bucket" in _imports(sample)
