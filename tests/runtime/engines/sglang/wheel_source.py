"""SGLang's source, read from the pinned release's wheel without installing or importing it.

The version is the one pinned by the `sglang` extra in pyproject.toml. The wheel is taken from `.venv/wheels/`
(where the Makefile pre-fetches it) or downloaded there with pip.
"""

import ast
import subprocess
import sys
import tomllib
import zipfile
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[4]
WHEEL_DIR = ROOT / ".venv" / "wheels"


def pinned_sglang_version() -> str:
    extra = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["sglang"]
    for requirement in map(Requirement, extra):
        if requirement.name == "sglang":
            (pin,) = requirement.specifier
            if pin.operator != "==":
                raise ValueError(f"the sglang extra must pin one release, found {requirement}")
            return pin.version
    raise LookupError("no sglang requirement in the sglang extra of pyproject.toml")


def pinned_wheel() -> Path:
    version = pinned_sglang_version()
    pattern = f"sglang-{version}-*.whl"
    if not any(WHEEL_DIR.glob(pattern)):
        download = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:"]
        command = [*download, f"sglang=={version}", "-d", str(WHEEL_DIR)]
        result = subprocess.run(command, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise RuntimeError(f"{' '.join(command)} failed:\n{result.stderr}")
    return sorted(WHEEL_DIR.glob(pattern))[0]


@dataclass(frozen=True)
class Parameters:
    """What a function accepts, `self` left out."""

    positional: tuple[str, ...]
    keywords: frozenset[str]
    var_keyword: bool

    @classmethod
    def of(cls, function: ast.FunctionDef | ast.AsyncFunctionDef) -> "Parameters":
        arguments = function.args
        positional = [a.arg for a in [*arguments.posonlyargs, *arguments.args]]
        if positional[:1] in (["self"], ["cls"]):
            positional = positional[1:]
        keywords = [a.arg for a in [*arguments.args, *arguments.kwonlyargs]]
        return cls(tuple(positional), frozenset(keywords) - {"self", "cls"}, arguments.kwarg is not None)


class SGLangSource:
    """The `sglang` package's Python files, parsed on demand."""

    def __init__(self, files: dict[str, str], parsed: dict[str, ast.Module] | None = None) -> None:
        self._files = files
        self._parsed = dict(parsed or {})

    @classmethod
    def from_wheel(cls, wheel: Path) -> "SGLangSource":
        with zipfile.ZipFile(wheel) as archive:
            files = {
                name: archive.read(name).decode("utf-8")
                for name in archive.namelist()
                if name.startswith("sglang/") and name.endswith(".py")
            }
        return cls(files)

    def edited(self, path: str, old: str, new: str) -> "SGLangSource":
        """A copy with one change in one file: how a test shows that a rename in SGLang would be caught."""
        if self._files[path].count(old) != 1:
            raise ValueError(f"{old!r} is not exactly once in {path}")
        unchanged = {name: tree for name, tree in self._parsed.items() if name != path}
        return SGLangSource({**self._files, path: self._files[path].replace(old, new)}, unchanged)

    def text(self, module: str) -> str:
        return self._files[self._path(module)]

    def has_module(self, module: str) -> bool:
        return self._find_path(module) is not None

    def module_paths(self, package: str) -> list[str]:
        prefix = package.replace(".", "/") + "/"
        return sorted(path for path in self._files if path.startswith(prefix))

    def tree(self, module: str) -> ast.Module:
        path = self._path(module)
        if path not in self._parsed:
            self._parsed[path] = ast.parse(self._files[path], filename=path)
        return self._parsed[path]

    def tree_at(self, path: str) -> ast.Module:
        return self.tree(path.removesuffix(".py").removesuffix("/__init__").replace("/", "."))

    def resolve(self, module: str, name: str) -> tuple[str, ast.stmt] | None:
        """The statement that defines `name` as seen from `module`, following imports and star imports."""
        stars: list[str] = []
        for statement in self.tree(module).body:
            if isinstance(statement, ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
                if statement.name == name:
                    return module, statement
            elif isinstance(statement, ast.Assign | ast.AnnAssign):
                targets = statement.targets if isinstance(statement, ast.Assign) else [statement.target]
                if any(isinstance(t, ast.Name) and t.id == name for t in targets):
                    return module, statement
            elif isinstance(statement, ast.ImportFrom) and statement.module and statement.level == 0:
                for alias in statement.names:
                    if alias.name == "*":
                        stars.append(statement.module)
                    elif (alias.asname or alias.name) == name:
                        return self._imported(statement, alias.name)
        for star in stars:
            if self.has_module(star) and (found := self.resolve(star, name)) is not None:
                return found
        return None

    def _imported(self, statement: ast.ImportFrom, name: str) -> tuple[str, ast.stmt] | None:
        source = statement.module or ""
        if self.has_module(source) and (found := self.resolve(source, name)) is not None:
            return found
        if self.has_module(f"{source}.{name}"):
            return f"{source}.{name}", statement
        return None

    def class_def(self, module: str, name: str) -> tuple[str, ast.ClassDef]:
        found = self.resolve(module, name)
        if found is None or not isinstance(found[1], ast.ClassDef):
            raise LookupError(f"no class {name} in {module}")
        return found[0], found[1]

    def methods(self, module: str, name: str) -> dict[str, ast.FunctionDef | ast.AsyncFunctionDef]:
        """Methods of a class, its own over those of its bases (bases found in this package)."""
        defined_in, cls = self.class_def(module, name)
        found: dict[str, ast.FunctionDef | ast.AsyncFunctionDef] = {}
        for base in reversed(cls.bases):
            if isinstance(base, ast.Name) and self.resolve(defined_in, base.id) is not None:
                found.update(self.methods(defined_in, base.id))
        found.update({s.name: s for s in cls.body if isinstance(s, ast.FunctionDef | ast.AsyncFunctionDef)})
        return found

    def function(self, module: str, name: str) -> ast.FunctionDef | ast.AsyncFunctionDef:
        found = self.resolve(module, name)
        if found is None or not isinstance(found[1], ast.FunctionDef | ast.AsyncFunctionDef):
            raise LookupError(f"no function {name} in {module}")
        return found[1]

    def class_fields(self, module: str, name: str) -> dict[str, ast.expr]:
        """Annotated class attributes (the fields of a dataclass or msgspec Struct), ClassVars left out."""
        _, cls = self.class_def(module, name)
        return {
            s.target.id: s.annotation
            for s in cls.body
            if isinstance(s, ast.AnnAssign)
            and isinstance(s.target, ast.Name)
            and "ClassVar" not in ast.unparse(s.annotation)
        }

    def server_args_fields(self) -> dict[str, tuple[str, ast.expr]]:
        """`ServerArgs` fields with the module and annotation that declare them.

        ServerArgs is assembled at import time from the namespace Structs listed in `_INPUT_NAMESPACES`
        (`srt/server_args.py`), plus its own annotations.
        """
        module = "sglang.srt.server_args"
        fields = {
            name: (module, annotation) for name, annotation in self.class_fields(module, "ServerArgs").items()
        }
        for statement in self.tree(module).body:
            if (
                isinstance(statement, ast.Assign)
                and any(isinstance(t, ast.Name) and t.id == "_INPUT_NAMESPACES" for t in statement.targets)
                and isinstance(statement.value, ast.List)
            ):
                for element in statement.value.elts:
                    if isinstance(element, ast.Name):
                        defined_in, _ = self.class_def(module, element.id)
                        for name, annotation in self.class_fields(defined_in, element.id).items():
                            fields[name] = (defined_in, annotation)
                return fields
        raise LookupError("no _INPUT_NAMESPACES list in sglang.srt.server_args")

    def choices(self, module: str, annotation: ast.expr) -> list[str] | None:
        """The `choices=` of a field declared `A[T, Arg(..., choices=...)]`, or None if it has none."""
        for node in ast.walk(annotation):
            if isinstance(node, ast.keyword) and node.arg == "choices":
                return self.strings(module, node.value)
        return None

    def strings(self, module: str, node: ast.expr) -> list[str]:
        """A list of string literals, or of names bound to them, or a module-level name of such a list."""
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            return [node.value]
        if isinstance(node, ast.List | ast.Tuple):
            return [value for element in node.elts for value in self.strings(module, element)]
        if isinstance(node, ast.Name):
            found = self.resolve(module, node.id)
            if found is not None and isinstance(found[1], ast.Assign | ast.AnnAssign) and found[1].value:
                return self.strings(found[0], found[1].value)
        raise ValueError(f"{ast.unparse(node)} in {module} is not a list of strings")

    def string_constants(self, module: str) -> set[str]:
        return {
            node.value
            for node in ast.walk(self.tree(module))
            if isinstance(node, ast.Constant) and isinstance(node.value, str)
        }

    def _find_path(self, module: str) -> str | None:
        base = module.replace(".", "/")
        for candidate in (f"{base}.py", f"{base}/__init__.py"):
            if candidate in self._files:
                return candidate
        return None

    def _path(self, module: str) -> str:
        path = self._find_path(module)
        if path is None:
            raise LookupError(f"no module {module} in the sglang wheel")
        return path


@cache
def pinned_source() -> SGLangSource:
    return SGLangSource.from_wheel(pinned_wheel())
