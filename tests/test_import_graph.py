"""The layering, read from the sources: which of our packages may import which, and what stays out of the
operator image.

    cli  ──lazily──►  operator   runtime       (neither imports the other, nor cli)
      └──────────────►  api  ◄──────┘          (api imports nothing of ours: a leaf)

The operator (and all it imports of ours) never imports torch, ray, transformers or sglang; bench never
imports tests. Read statically (ast over every file), so an import on a path no test runs counts too; an
import inside a function counts as lazy, one under `if TYPE_CHECKING:` as never executed.
"""

import ast
from collections.abc import Collection, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("api", "cli", "operator", "runtime")
HEAVY = {"torch", "ray", "transformers", "sglang"}

# Known debt, listed exactly so that a new one fails: the operator benchmark drives the operator against the
# test suite's API server emulator, which is to move out of tests/ into a package both can import.
BENCH_IMPORTS_OF_TESTS = {
    ("bench.operator", "tests.operator.apiserver"),
    ("bench.operator", "tests.operator.harness"),
    ("bench.operator", "tests.operator.rbac_audit"),
}


@dataclass(frozen=True)
class Import:
    module: str
    """The imported module's full name (for `from a import b`: `a.b` when that is a module, else `a`)."""
    lazy: bool
    """Inside a function body: runs when the function is called, not when the importer is imported."""
    type_only: bool
    """Under `if TYPE_CHECKING:`: never runs."""


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    name = ".".join(parts).removesuffix(".__init__")
    return f"kubedistill.{name}" if parts[0] in PACKAGES else name


def _sources() -> dict[str, Path]:
    return {
        module_name(path): path
        for top in (*PACKAGES, "bench", "tests")
        for path in sorted((ROOT / top).rglob("*.py"))
        if "plugin_site" not in path.parts
    }


SOURCES = _sources()


def imports_in(source: str, known: Collection[str] = ()) -> list[Import]:
    """Every import statement in `source`, where it sits."""
    found: list[Import] = []

    def visit(node: ast.AST, lazy: bool, type_only: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.Import):
                found.extend(Import(alias.name, lazy, type_only) for alias in child.names)
            elif isinstance(child, ast.ImportFrom) and child.module and not child.level:
                for alias in child.names:
                    full = f"{child.module}.{alias.name}"
                    found.append(Import(full if full in known else child.module, lazy, type_only))
            elif isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
                visit(child, True, type_only)
            elif isinstance(child, ast.If) and _is_type_checking(child.test):
                for statement in child.body:
                    visit(ast.Module(body=[statement], type_ignores=[]), lazy, True)
                for statement in child.orelse:
                    visit(ast.Module(body=[statement], type_ignores=[]), lazy, type_only)
            else:
                visit(child, lazy, type_only)

    visit(ast.parse(source), False, False)
    return found


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _graph() -> dict[str, list[Import]]:
    known = set(SOURCES)
    return {name: imports_in(path.read_text(encoding="utf-8"), known) for name, path in SOURCES.items()}


GRAPH = _graph()


def _ours(module: str) -> str | None:
    """The module of ours an import names (a package's `__init__` for `kubedistill.api`), else None."""
    while module:
        if module in SOURCES:
            return module
        module = module.rpartition(".")[0]
    return None


def _package(module: str) -> str:
    parts = module.split(".")
    return parts[1] if parts[0] == "kubedistill" else parts[0]


def _edges(package: str) -> Iterator[tuple[str, Import]]:
    for importer, imports in GRAPH.items():
        if _package(importer) == package:
            for imported in imports:
                yield importer, imported


def _executed_closure(start: set[str]) -> dict[str, str]:
    """Our modules that importing `start` executes (top-level imports, followed through ours), each with
    the module that first imports it."""
    reached = {module: module for module in start}
    todo = list(start)
    while todo:
        importer = todo.pop()
        for imported in GRAPH[importer]:
            ours = _ours(imported.module)
            if imported.lazy or imported.type_only or ours is None or ours in reached:
                continue
            reached[ours] = importer
            todo.append(ours)
            # Importing a.b.c runs the __init__ of a.b first.
            parent = ours.rpartition(".")[0]
            while parent and parent in SOURCES and parent not in reached:
                reached[parent] = importer
                todo.append(parent)
                parent = parent.rpartition(".")[0]
    return reached


def _heavy_top_level_imports(start: set[str]) -> list[str]:
    return [
        f"{module} (reached from {via}) imports {imported.module}"
        for module, via in _executed_closure(start).items()
        for imported in GRAPH[module]
        if not (imported.lazy or imported.type_only) and imported.module.split(".")[0] in HEAVY
    ]


@pytest.mark.parametrize(
    ("package", "may_import"),
    [
        ("api", {"api"}),
        ("operator", {"api", "operator"}),
        ("runtime", {"api", "runtime"}),
        ("cli", {"api", "cli", "operator", "runtime"}),
    ],
)
def test_each_package_imports_only_the_packages_below_it(package: str, may_import: set[str]) -> None:
    wrong = [
        f"{importer} imports {imported.module}"
        for importer, imported in _edges(package)
        if (ours := _ours(imported.module)) is not None and _package(ours) not in may_import
    ]
    assert not wrong


def test_the_cli_imports_the_operator_and_the_runtime_only_inside_its_subcommands() -> None:
    eager = [
        f"{importer} imports {imported.module} at import time"
        for importer, imported in _edges("cli")
        if not (imported.lazy or imported.type_only)
        and (ours := _ours(imported.module)) is not None
        and _package(ours) in {"operator", "runtime"}
    ]
    assert not eager
    lazy = {_package(ours) for _, i in _edges("cli") if i.lazy and (ours := _ours(i.module)) is not None}
    assert {"operator", "runtime"} <= lazy, "the subcommands' imports were not seen"


def test_the_operator_never_imports_torch_or_ray_even_through_our_modules() -> None:
    operator = {name for name in SOURCES if _package(name) == "operator"}
    closure = _executed_closure(operator)
    assert "kubedistill.api.spec" in closure, "the walk did not follow the operator's imports of api"
    assert not _heavy_top_level_imports(operator)
    heavy_anywhere = [
        f"{module} imports {imported.module}"
        for module in closure
        for imported in GRAPH[module]
        if imported.module.split(".")[0] in HEAVY
    ]
    assert not heavy_anywhere, "not even lazily: the operator image has none of them"


def test_importing_the_cli_loads_no_torch_or_ray() -> None:
    assert not _heavy_top_level_imports({"kubedistill.cli"})


def test_bench_never_imports_tests_beyond_the_known_debt() -> None:
    found = {
        (importer, ours)
        for importer, imported in _edges("bench")
        if (ours := _ours(imported.module)) is not None and _package(ours) == "tests"
    }
    assert found == BENCH_IMPORTS_OF_TESTS


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("import torch", [Import("torch", lazy=False, type_only=False)]),
        ("def f():\n    import torch", [Import("torch", lazy=True, type_only=False)]),
        (
            "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from ray import ObjectRef",
            [Import("typing", False, False), Import("ray", lazy=False, type_only=True)],
        ),
        (
            "class A:\n    def f(self):\n        from a.b import c",
            [Import("a.b", lazy=True, type_only=False)],
        ),
        ("from a import b", [Import("a.b", lazy=False, type_only=False)]),
    ],
    ids=["top-level", "in-a-function", "type-checking", "in-a-method", "a-submodule"],
)
def test_imports_are_read_with_where_they_run(source: str, expected: list[Import]) -> None:
    assert imports_in(source, known={"a.b"}) == expected


ROLE_FOLDERS = {
    "algorithms",
    "cluster",
    "data",
    "demo",
    "engines",
    "generation",
    "losses",
    "models",
    "rollout",
    "student",
    "teacher",
    "trainer",
}
"""`runtime/`'s folders, one per role; the README's "where things live" map names each."""


def test_every_runtime_module_lives_in_a_role_folder() -> None:
    runtime = ROOT / "runtime"
    loose = sorted(path.name for path in runtime.glob("*.py") if path.name != "__init__.py")
    assert not loose
    folders = {path.name for path in runtime.iterdir() if path.is_dir() and path.name != "__pycache__"}
    assert folders == ROLE_FOLDERS
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert not [folder for folder in sorted(folders) if f"`runtime/{folder}/`" not in readme]


def test_no_runtime_module_exists_only_to_hold_one_short_helper() -> None:
    lone = []
    for path in sorted((ROOT / "runtime").rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        defined = [node for node in tree.body if isinstance(node, ast.FunctionDef | ast.ClassDef)]
        runs_as_main = any(
            isinstance(node, ast.If) and "__main__" in ast.unparse(node.test) for node in tree.body
        )
        short = len(path.read_text(encoding="utf-8").splitlines()) < 40
        if short and len(defined) == 1 and isinstance(defined[0], ast.FunctionDef) and not runs_as_main:
            lone.append(str(path.relative_to(ROOT)))
    assert not lone


def _import_cycle(package: str) -> list[str] | None:
    """A cycle of top-level imports among the package's modules (what makes one of them half-initialised
    when another is imported first), or None."""
    modules = {name for name in SOURCES if _package(name) == package}
    edges = {
        name: {
            ours
            for imported in GRAPH[name]
            if not (imported.lazy or imported.type_only)
            and (ours := _ours(imported.module)) in modules
            and ours != name
            and not name.startswith(f"{ours}.")  # a package's own __init__ runs first, not a cycle
        }
        for name in modules
    }
    state: dict[str, int] = {}
    path: list[str] = []

    def visit(name: str) -> list[str] | None:
        state[name] = 1
        path.append(name)
        for nxt in sorted(edges[name]):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        state[name] = 2
        path.pop()
        return None

    for name in sorted(modules):
        if name not in state and (cycle := visit(name)):
            return cycle
    return None


@pytest.mark.parametrize("package", ["api", "operator", "runtime"])
def test_no_package_has_an_import_cycle(package: str) -> None:
    assert _import_cycle(package) is None


def test_the_cycle_check_finds_a_cycle() -> None:
    saved = GRAPH["kubedistill.runtime.engines.layout"]
    GRAPH["kubedistill.runtime.engines.layout"] = [
        *saved,
        Import("kubedistill.runtime.engines.sglang.args", False, False),
    ]
    try:
        cycle = _import_cycle("runtime")
    finally:
        GRAPH["kubedistill.runtime.engines.layout"] = saved
    assert cycle is not None and "kubedistill.runtime.engines.sglang.args" in cycle
