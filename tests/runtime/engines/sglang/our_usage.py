"""What our code asks of SGLang, read from its syntax tree, and the checks of that against SGLang's source.

The checks return problems (strings) instead of asserting, so that tests can also show them catching a
deliberately wrong name.
"""

import ast
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from tests.runtime.engines.sglang.wheel_source import ROOT, Parameters, SGLangSource

RUNTIME = ROOT / "runtime"
SGLANG = RUNTIME / "engines" / "sglang"
ENGINE_MODULE = SGLANG / "engine.py"
ARGS_MODULE = SGLANG / "args.py"
BACKEND_MODULES = (SGLANG / "teacher.py", SGLANG / "rollout.py")

ENGINE = ("sglang.srt.entrypoints.engine", "Engine")
SAMPLING_PARAMS = ("sglang.srt.sampling.sampling_params", "SamplingParams")


@cache
def parse(path: Path) -> ast.Module:
    return ast.parse(path.read_text(encoding="utf-8"), filename=str(path))


def runtime_files() -> list[Path]:
    return sorted(RUNTIME.rglob("*.py"))


def sglang_users() -> list[Path]:
    """Runtime modules that import SGLang or any of our SGLang modules."""
    ours = ("kubedistill.runtime.engines.sglang",)
    return [
        path
        for path in runtime_files()
        if sglang_imports(parse(path))
        or any(
            isinstance(node, ast.ImportFrom) and (node.module or "").startswith(ours)
            for node in ast.walk(parse(path))
        )
    ]


@dataclass(frozen=True)
class Import:
    module: str
    name: str | None
    line: int


def sglang_imports(tree: ast.Module) -> list[Import]:
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "sglang":
            found.extend(Import(node.module or "", alias.name, node.lineno) for alias in node.names)
        elif isinstance(node, ast.Import):
            found.extend(
                Import(alias.name, None, node.lineno)
                for alias in node.names
                if alias.name.split(".")[0] == "sglang"
            )
    return found


def import_problems(imports: list[Import], source: SGLangSource) -> list[str]:
    problems = []
    for imported in imports:
        if not source.has_module(imported.module):
            problems.append(f"line {imported.line}: no module {imported.module}")
        elif imported.name is not None and source.resolve(imported.module, imported.name) is None:
            problems.append(f"line {imported.line}: {imported.module} has no {imported.name}")
    return problems


def _is_self_engine(node: ast.expr) -> bool:
    return (
        isinstance(node, ast.Attribute)
        and node.attr == "_engine"
        and isinstance(node.value, ast.Name)
        and node.value.id == "self"
    )


def engine_calls(tree: ast.Module) -> list[ast.Call]:
    """Calls of the form `self._engine.<method>(...)`."""
    return [
        node
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and _is_self_engine(node.func.value)
    ]


def stray_engine_uses(tree: ast.Module, holds_engine: bool) -> list[int]:
    """Lines that touch an `_engine` attribute other than, in the module that holds the engine, by assigning
    `self._engine` or calling one of its methods directly."""
    allowed: set[int] = set()
    for node in ast.walk(tree) if holds_engine else ():
        if isinstance(node, ast.Assign) and any(_is_self_engine(t) for t in node.targets):
            allowed.update(id(t) for t in node.targets)
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and _is_self_engine(node.func.value)
        ):
            allowed.add(id(node.func.value))
    return [
        node.lineno
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute) and node.attr == "_engine" and id(node) not in allowed
    ]


def call_problems(call: ast.Call, parameters: Parameters, label: str) -> list[str]:
    problems = []
    if any(isinstance(a, ast.Starred) for a in call.args) or any(k.arg is None for k in call.keywords):
        problems.append(
            f"line {call.lineno}: {label} is called with * or ** arguments, which cannot be checked"
        )
    if len(call.args) > len(parameters.positional):
        problems.append(
            f"line {call.lineno}: {label} takes {len(parameters.positional)} positional arguments"
        )
    for keyword in call.keywords:
        if keyword.arg is not None and keyword.arg not in parameters.keywords and not parameters.var_keyword:
            problems.append(f"line {call.lineno}: {label} has no parameter {keyword.arg}")
    return problems


def engine_call_problems(calls: list[ast.Call], source: SGLangSource) -> list[str]:
    methods = source.methods(*ENGINE)
    problems = []
    for call in calls:
        assert isinstance(call.func, ast.Attribute)
        name = call.func.attr
        if name not in methods:
            problems.append(f"line {call.lineno}: Engine has no method {name}")
        else:
            problems.extend(call_problems(call, Parameters.of(methods[name]), f"Engine.{name}"))
    return problems


def calls_of(tree: ast.Module, name: str) -> list[ast.Call]:
    """Calls of a bare name, e.g. `Engine(...)` or `init_custom_process_group(...)`."""
    return [
        node
        for node in ast.walk(tree)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == name
    ]


def method_calls(tree: ast.Module, receiver: str, method: str) -> list[ast.Call]:
    """Calls of the form `self.<receiver>.<method>(...)`."""
    return [
        node
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr == method
        and isinstance(node.func.value, ast.Attribute)
        and node.func.value.attr == receiver
    ]


def called_name(node: ast.expr | None) -> str | None:
    """`f` if `node` is the call `f(...)`, else None."""
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
        return node.func.id
    return None


def literal_keys(tree: ast.Module, function: str) -> set[str]:
    """Every key the dicts returned by a module-level function can hold, following `**helper(...)` into
    functions of the same module. A key that is not a string literal is an error: it could not be checked."""
    functions = {s.name: s for s in tree.body if isinstance(s, ast.FunctionDef)}
    keys: set[str] = set()
    for node in ast.walk(functions[function]):
        if isinstance(node, ast.Return) and isinstance(node.value, ast.Dict):
            for key, value in zip(node.value.keys, node.value.values, strict=True):
                if key is None and called_name(value) in functions:
                    keys |= literal_keys(tree, called_name(value) or "")
                elif isinstance(key, ast.Constant) and isinstance(key.value, str):
                    keys.add(key.value)
                else:
                    raise ValueError(f"{function}: key {ast.unparse(key or value)} is not a string literal")
        elif isinstance(node, ast.Return):
            raise ValueError(f"{function} must return a dict literal, not {ast.unparse(node.value or node)}")
    return keys


def unknown_keys(keys: set[str], known: set[str], label: str) -> list[str]:
    return [f"{label} has no {key}" for key in sorted(keys - known)]


SERVER_ARG_BUILDERS = ("teacher_engine_args", "rollout_engine_args")
SAMPLING_PARAM_BUILDERS = ("hidden_state_sampling_params", "rollout_sampling_params")
IMAGE_ITEM_BUILDER = "_processor_output"
IMAGE_DATA_BUILDERS = ("image_data_for", "rollout_image_data")
MM_PROCESSOR = "sglang.srt.multimodal.processors.base_processor"
FORMAT_KEY = "format"


def _self_assignment(source: SGLangSource, module: str, attribute: str) -> ast.expr:
    """The value of the one `self.<attribute> = ...` in a module."""
    (value,) = [
        node.value
        for node in ast.walk(source.tree(module))
        if isinstance(node, ast.Assign)
        and any(ast.unparse(target) == f"self.{attribute}" for target in node.targets)
    ]
    return value


def image_item_keys(source: SGLangSource) -> set[str]:
    """Keys of a processor-output dict that SGLang puts into an image item: those `ATTR_NAME_TO_MODALITY`
    maps to `Modality.IMAGE` (`BaseMultimodalProcessor.__init__`), read by
    `collect_mm_items_from_processor_output`."""
    mapping = _self_assignment(source, MM_PROCESSOR, "ATTR_NAME_TO_MODALITY")
    if not isinstance(mapping, ast.Dict):
        raise ValueError("ATTR_NAME_TO_MODALITY is not a dict literal")
    return {
        key.value
        for key, value in zip(mapping.keys, mapping.values, strict=True)
        if isinstance(key, ast.Constant)
        and isinstance(key.value, str)
        and ast.unparse(value) == "Modality.IMAGE"
    }


def feature_names(source: SGLangSource) -> set[str]:
    """Keys that become an item's `feature` (what the model's vision tower reads)."""
    return set(source.strings(MM_PROCESSOR, _self_assignment(source, MM_PROCESSOR, "FEATURE_NAMES")))


def processor_output_formats(source: SGLangSource) -> set[str]:
    """The `format` strings `_get_preprocessed_input_format` takes for an HF processor's output: the
    literals of each `if` whose body returns `MultimodalInputFormat.PROCESSOR_OUTPUT`."""
    _, cls = source.class_def(MM_PROCESSOR, "BaseMultimodalProcessor")
    (function,) = [
        s for s in cls.body if isinstance(s, ast.FunctionDef) and s.name == "_get_preprocessed_input_format"
    ]
    formats: set[str] = set()
    for node in ast.walk(function):
        if isinstance(node, ast.If) and any(
            isinstance(s, ast.Return)
            and s.value is not None
            and ast.unparse(s.value) == "MultimodalInputFormat.PROCESSOR_OUTPUT"
            for s in node.body
        ):
            formats |= {
                c.value
                for c in ast.walk(node.test)
                if isinstance(c, ast.Constant) and isinstance(c.value, str)
            }
    return formats


def image_item_problems(args: ast.Module, source: SGLangSource) -> list[str]:
    """What our image item sends that SGLang would not read as a Qwen-VL image's processor output."""
    label = f"{IMAGE_ITEM_BUILDER}: SGLang's processor output"
    keys = literal_keys(args, IMAGE_ITEM_BUILDER)
    problems = unknown_keys(keys - {FORMAT_KEY}, image_item_keys(source), f"{label} image keys")
    if FORMAT_KEY not in keys:
        problems.append(f"{label} needs a {FORMAT_KEY} key")
    if not keys & feature_names(source):
        problems.append(f"{label} has none of the feature keys {sorted(feature_names(source))}")
    format_values = {
        ast.unparse(value)
        for node in ast.walk(args)
        if isinstance(node, ast.Dict)
        for key, value in zip(node.keys, node.values, strict=True)
        if isinstance(key, ast.Constant) and key.value == FORMAT_KEY
    }
    if format_values != {"PROCESSOR_OUTPUT"}:
        problems.append(f"{label}: format must be PROCESSOR_OUTPUT, is {sorted(format_values)}")
    declared = _module_string(args, "PROCESSOR_OUTPUT")
    if declared not in processor_output_formats(source):
        problems.append(f"{label}: no format {declared!r} (takes {sorted(processor_output_formats(source))})")
    return problems


def _module_string(tree: ast.Module, name: str) -> str | None:
    for statement in tree.body:
        if (
            isinstance(statement, ast.Assign)
            and any(isinstance(t, ast.Name) and t.id == name for t in statement.targets)
            and isinstance(statement.value, ast.Constant)
            and isinstance(statement.value.value, str)
        ):
            return statement.value.value
    return None


def imported_from(tree: ast.Module, name: str) -> str | None:
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and any((a.asname or a.name) == name for a in node.names):
            return node.module
    return None


def named_call_problems(tree: ast.Module, source: SGLangSource) -> list[str]:
    """Calls of functions imported from SGLang by name, checked against their definitions."""
    problems = []
    for imported in sglang_imports(tree):
        if imported.name is None or (found := source.resolve(imported.module, imported.name)) is None:
            continue
        module, definition = found
        if isinstance(definition, ast.ClassDef):
            init = source.methods(module, definition.name).get("__init__")
            parameters = Parameters.of(init) if init else Parameters((), frozenset(), False)
        elif isinstance(definition, ast.FunctionDef | ast.AsyncFunctionDef):
            parameters = Parameters.of(definition)
        else:
            continue
        for call in calls_of(tree, imported.name):
            if parameters.var_keyword and any(k.arg is None for k in call.keywords) and not call.args:
                continue  # Engine(**server_args): the keys are checked as ServerArgs fields
            problems.extend(call_problems(call, parameters, imported.name))
    return problems


def origins(tree: ast.Module, node: ast.expr) -> list[str | None]:
    """The functions whose result `node` is: a direct call, or a name every assignment of which is a call."""
    if isinstance(node, ast.Name):
        return [
            called_name(assign.value)
            for assign in ast.walk(tree)
            if isinstance(assign, ast.Assign)
            and any(isinstance(t, ast.Name) and t.id == node.id for t in assign.targets)
        ] or [None]
    return [called_name(node)]


def all_problems(source: SGLangSource) -> list[str]:
    """Everything our code asks of SGLang that the release does not offer under that name."""
    problems = []
    for path in runtime_files():
        tree = parse(path)
        where = path.relative_to(ROOT)
        problems += [f"{where}: {p}" for p in import_problems(sglang_imports(tree), source)]
        problems += [f"{where}: {p}" for p in engine_call_problems(engine_calls(tree), source)]
        problems += [f"{where}: {p}" for p in named_call_problems(tree, source)]
    args = parse(ARGS_MODULE)
    server_fields = set(source.server_args_fields())
    for builder in SERVER_ARG_BUILDERS:
        problems += unknown_keys(literal_keys(args, builder), server_fields, f"{builder}: ServerArgs")
    sampling_fields = set(source.class_fields(*SAMPLING_PARAMS))
    for builder in SAMPLING_PARAM_BUILDERS:
        problems += unknown_keys(literal_keys(args, builder), sampling_fields, f"{builder}: SamplingParams")
    problems += image_item_problems(args, source)
    return problems
