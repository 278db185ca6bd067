"""The package layers: every import in dogclf (top-level, function-local or under TYPE_CHECKING) points down.

Each package (or private root module) has a layer; a module may import its own package and anything in a lower
layer, never a higher one, and no two packages import each other. A new package must be given a layer here.
docs/architecture.md shows the same order as a picture.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "dogclf"

# Lowest first. The first entry is the base every layer may use: leaf helpers that import nothing above it.
LAYERS: tuple[tuple[str, ...], ...] = (
    (
        "_cachedir",
        "_command",
        "_compat",
        "_extras",
        "_json",
        "_lazy",
        "_logging",
        "_progress",
        "_sorting",
        "_version",
        "errors",
        "hardware",
    ),
    ("backbones",),
    ("data",),
    ("model",),
    ("artifact",),
    ("inference",),
    ("features",),
    ("classifier",),
    ("training",),
    ("diagnostics",),
    ("evaluation",),
    ("pipeline",),
    ("serving",),
    ("tuning",),
    ("sagemaker",),
    ("cli",),
    ("__init__", "__main__"),  # the public facade: dogclf.train, dogclf.load_model, ... and `python -m dogclf`
)
LAYER = {unit: level for level, units in enumerate(LAYERS) for unit in units}


def unit_of(module: str) -> str:
    """The package (or root module) a dotted module name belongs to: ``dogclf.cli.app`` -> ``cli``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" and len(parts) > 1 else parts)


def imported_modules(source: str, module: str) -> Iterator[tuple[int, str]]:
    """``(line, module)`` for every dogclf import in ``source``, wherever it is, and every lazy ``_EXPORTS`` target."""
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            yield from ((node.lineno, alias.name) for alias in node.names if alias.name.split(".")[0] == "dogclf")
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against this module's package
                base = module.split(".")[: len(module.split(".")) - node.level + (module == "dogclf")]
                yield node.lineno, ".".join([*base, *([node.module] if node.module else [])])
            elif node.module and node.module.split(".")[0] == "dogclf":
                # `from dogclf import x` names a root attribute, or a subpackage x
                names = [f"{node.module}.{a.name}" for a in node.names] if node.module == "dogclf" else [node.module]
                yield from ((node.lineno, name) for name in names)
        elif _is_exports(node):
            for value in node.value.values:
                if isinstance(value, ast.Constant) and str(value.value).startswith("dogclf"):
                    yield node.lineno, str(value.value)


def _is_exports(node: ast.AST) -> bool:
    """A package's lazy ``_EXPORTS = {name: module}`` table (:mod:`dogclf._lazy`)."""
    return (
        isinstance(node, ast.Assign)
        and isinstance(node.value, ast.Dict)
        and any(getattr(target, "id", None) == "_EXPORTS" for target in node.targets)
    )


def _target_unit(name: str) -> str:
    unit = unit_of(name)
    if name.startswith("dogclf.") and unit not in LAYER:  # `from dogclf import __version__`: the root facade
        return "__init__"
    return unit


def upward_imports(source: str, module: str) -> list[str]:
    """What in ``source`` (the module ``module``) imports from a higher layer, one line per import."""
    here = unit_of(module)
    if here not in LAYER:
        return [f"{module}: {here} has no layer in LAYERS"]
    found = []
    for line, name in imported_modules(source, module):
        there = _target_unit(name)
        if there != here and LAYER.get(there, len(LAYERS)) > LAYER[here]:
            found.append(f"{module}:{line} imports {name} ({there}, layer {LAYER.get(there)} > {here}, {LAYER[here]})")
    return found


def _modules() -> list[tuple[str, str]]:
    return [(module_name(path), path.read_text()) for path in sorted(PACKAGE.rglob("*.py"))]


def _package_graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for module, source in _modules():
        here = unit_of(module)
        for _, name in imported_modules(source, module):
            if (there := _target_unit(name)) != here:
                graph.setdefault(here, set()).add(there)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of the graph as ``[a, b, ..., a]``, or ``None``."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_every_package_has_a_layer() -> None:
    units = {unit_of(module) for module, _ in _modules()}

    assert sorted(units - LAYER.keys()) == [], "give each new package a layer in LAYERS"


def test_no_module_imports_from_a_higher_layer() -> None:
    found = [line for module, source in _modules() for line in upward_imports(source, module)]

    assert found == [], "upward imports:\n" + "\n".join(found)


def test_no_two_packages_import_each_other() -> None:
    assert find_cycle(_package_graph()) is None


@pytest.mark.parametrize(
    ("module", "source"),
    [
        ("dogclf.data.folder", "from dogclf.cli.app import main\n"),
        ("dogclf.features.extract", "def f():\n    from dogclf.training.config import TrainConfig\n"),
        ("dogclf.inference.engine", "import typing\nif typing.TYPE_CHECKING:\n    import dogclf.classifier\n"),
        ("dogclf.errors", "from dogclf import load_model\n"),
        ("dogclf.training", '_EXPORTS = {"train": "dogclf.pipeline.run"}\n'),
    ],
    ids=["top-level", "function-local", "type-checking", "root-facade", "lazy-export"],
)
def test_an_upward_import_is_caught_wherever_it_is(module: str, source: str) -> None:
    assert len(upward_imports(source, module)) == 1


def test_an_import_down_or_within_a_package_passes() -> None:
    source = "from dogclf.errors import DogclfError\nfrom dogclf.backbones import spec\nfrom . import images\n"

    assert upward_imports(source, "dogclf.data.folder") == []


def test_a_cycle_between_two_packages_is_found() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set(), "c": {"a"}}) is None
