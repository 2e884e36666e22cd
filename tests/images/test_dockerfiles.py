"""The two images, read from their Dockerfiles: pinned bases, a non-root user, the right extras (the
operator image has neither torch nor Ray), and a build context that holds the sources and nothing else."""

import json
import re
import shlex
import tomllib
from functools import cache
from pathlib import Path

import pytest
from docker.utils.build import PatternMatcher
from dockerfile_parse import DockerfileParser
from typer.main import get_command

from kubedistill.cli import app

ROOT = Path(__file__).resolve().parents[2]
OPERATOR = ROOT / "images" / "operator" / "Dockerfile"
RUNTIME = ROOT / "images" / "runtime" / "Dockerfile"
DOCKERFILES = [OPERATOR, RUNTIME]
HEAVY = ("torch", "ray", "sglang", "transformers")


@cache
def _parsed(path: Path) -> DockerfileParser:
    parser = DockerfileParser(fileobj=path.open("rb"))
    parser.content  # noqa: B018  # read the file now; the parser is lazy
    return parser


def _instructions(path: Path, name: str) -> list[str]:
    return [item["value"] for item in _parsed(path).structure if item["instruction"] == name]


def _stage_names(path: Path) -> set[str]:
    names = set()
    for value in _instructions(path, "FROM"):
        parts = value.split()
        if len(parts) == 3 and parts[1].lower() == "as":
            names.add(parts[2])
    return names


def _base_images(path: Path) -> list[str]:
    stages = _stage_names(path)
    return [value.split()[0] for value in _instructions(path, "FROM") if value.split()[0] not in stages]


def _pip_installs(path: Path) -> list[str]:
    """The arguments of every `pip install` in RUN instructions."""
    installs = []
    for run in _instructions(path, "RUN"):
        for words in _commands(run):
            if "pip" in " ".join(words[:4]) and "install" in words:
                installs.append(" ".join(words[words.index("install") + 1 :]))
    return installs


def _commands(run: str) -> list[list[str]]:
    """A shell line cut into its simple commands at `&&`, `||`, `;` and `|`, quotes respected."""
    lexer = shlex.shlex(run, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    commands: list[list[str]] = [[]]
    for token in lexer:
        if token in ("&&", "||", ";", "|", ">"):
            commands.append([])
        else:
            commands[-1].append(token)
    return [command for command in commands if command]


def _extras(install: str) -> set[str]:
    match = re.search(r"\.\[([a-z,]+)\]", install)
    return set(match.group(1).split(",")) if match else set()


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.parent.name)
def test_base_images_are_pinned_to_a_release(dockerfile: Path) -> None:
    bases = _base_images(dockerfile)
    assert bases
    for image in bases:
        name, _, tag = image.partition("@")[0].rpartition(":")
        assert name and tag, f"{image} has no tag"
        assert tag != "latest" and re.search(r"\d+\.\d+", tag), f"{image} is not pinned to a version"


def test_the_operator_base_is_pinned_by_digest_too() -> None:
    for image in _base_images(OPERATOR):
        assert re.search(r"@sha256:[0-9a-f]{64}$", image), image


def test_the_runtime_base_is_sglangs_image_of_the_pinned_release() -> None:
    pin = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    (sglang,) = pin["optional-dependencies"]["sglang"]
    version = sglang.split("==")[1]
    assert _base_images(RUNTIME) == [f"lmsysorg/sglang:v{version}-cu130"]


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.parent.name)
def test_the_image_runs_as_a_numeric_non_root_user(dockerfile: Path) -> None:
    users = _instructions(dockerfile, "USER")
    assert users, "no USER: the image would run as root"
    user = users[-1].split(":")[0]
    assert user.isdigit() and int(user) != 0, users[-1]


def test_the_ray_pods_run_as_the_runtime_images_user() -> None:
    from kubedistill.operator.pods import RUNTIME_UID

    assert _instructions(RUNTIME, "USER")[-1] == f"{RUNTIME_UID}:{RUNTIME_UID}"


def test_the_operator_image_installs_the_operator_extra_only() -> None:
    (install,) = _pip_installs(OPERATOR)
    assert _extras(install) == {"operator"}


def test_nothing_heavy_reaches_the_operator_image() -> None:
    for instruction in ("RUN", "ENV", "ARG"):
        for value in _instructions(OPERATOR, instruction):
            for name in HEAVY:
                assert not re.search(rf"\b{name}\b", value), f"{instruction} {value}"
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    operator_extra = extras["optional-dependencies"]["operator"]
    assert not [dep for dep in operator_extra if re.match(rf"({'|'.join(HEAVY)})\b", dep)]


def test_the_runtime_image_installs_the_runtime_and_sglang_extras() -> None:
    (install,) = _pip_installs(RUNTIME)
    assert _extras(install) == {"runtime", "sglang"}
    assert "--constraint" in install, "the base image's torch must be held, not replaced"


def test_the_operator_entrypoint_is_the_cli_command_and_its_default_arguments_parse() -> None:
    (entrypoint,) = _instructions(OPERATOR, "ENTRYPOINT")
    (cmd,) = _instructions(OPERATOR, "CMD")
    assert json.loads(entrypoint) == ["kubedistill", "operator"]
    operator = get_command(app).commands["operator"]  # type: ignore[attr-defined]
    params = operator.make_context("operator", json.loads(cmd)).params
    assert params["all_namespaces"] is True and params["standalone"] is True


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.parent.name)
def test_every_copied_source_exists_and_is_in_the_build_context(dockerfile: Path) -> None:
    matcher = PatternMatcher(_dockerignore())
    for value in _instructions(dockerfile, "COPY"):
        if value.startswith("--from="):
            continue
        *sources, _ = value.split()
        for source in sources:
            assert (ROOT / source).exists(), source
            assert not matcher.matches(source), f"{source} is excluded by .dockerignore"


def _dockerignore() -> list[str]:
    lines = (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


@pytest.mark.parametrize(
    "path",
    [
        ".venv/bin/python",
        ".git/HEAD",
        "demo-output/run/model.safetensors",
        "output/job/checkpoint",
        "runtime/__pycache__/cli.cpython-311.pyc",
        "api/__pycache__/spec.cpython-311.pyc",
        "kubedistill.egg-info/PKG-INFO",
        ".pytest_cache/v/cache",
        "bench/results/loss.json",
        "tests/api/test_crd.py",
    ],
)
def test_the_build_context_leaves_out(path: str) -> None:
    assert PatternMatcher(_dockerignore()).matches(path)


@pytest.mark.parametrize(
    "path",
    [
        "pyproject.toml",
        "README.md",
        "api/spec.py",
        "operator/render.py",
        "cli/commands.py",
        "runtime/trainer/run.py",
    ],
)
def test_the_build_context_keeps(path: str) -> None:
    assert not PatternMatcher(_dockerignore()).matches(path)
