"""The bad-input catalogue as a user meets it: `kubedistill validate` and `kubedistill run`.

Every bad manifest of `tests/api/manifests.py` and every bad data file of `tests/runtime/data/files/` goes
through the command: it exits 1 printing `FILE: <where>: <problem>` and no traceback. The whole catalogue
runs in this process (typer's runner, the same code path after argument parsing); a sample of each kind runs
as the installed command in a process of its own, which must also leave Ray unstarted: Ray's temporary root
is pointed at an empty folder (RAY_TMPDIR) that must stay without a session, and a control test shows that
a Ray that does start leaves one there.
"""

import copy
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import trl
import yaml
from typer.testing import CliRunner

from kubedistill.api.spec import Mode
from kubedistill.cli import app
from kubedistill.runtime.demo.tiny import build_tokenizer, build_vlm_tokenizer, save_tiny, save_tiny_vlm
from kubedistill.runtime.trainer.checkpoints import CheckpointDirectory, TrainerState
from tests.api.manifests import BAD_MANIFESTS, Bad, apply_changes
from tests.runtime.conftest import ON_POLICY, STUDENT, TEACHER, TinyWorld, job_manifest
from tests.runtime.data.builders import CORPUS, FILES
from tests.runtime.data.test_load import BAD_FILES, BadFile

KUBEDISTILL = shutil.which("kubedistill", path=str(Path(sys.executable).parent))
CLI_TIMEOUT_SECONDS = 300
"""Generous for a CPU shared by several test runs; what it catches is a command that never returns."""


@dataclass(frozen=True)
class Outcome:
    exit_code: int
    stdout: str
    stderr: str
    ray_sessions: list[str] = field(default_factory=list)
    """Ray session folders a separate process left in its own RAY_TMPDIR."""

    @property
    def lines(self) -> list[str]:
        return self.stderr.splitlines()


def invoke(args: Sequence[str]) -> Outcome:
    """The command in this process; an exception other than the command's exit fails the test here."""
    result = CliRunner().invoke(app, list(args))
    if not isinstance(result.exception, SystemExit | None):
        raise result.exception
    return Outcome(result.exit_code, result.stdout, result.stderr)


def kubedistill(args: Sequence[str], cwd: Path, env: dict[str, str] | None = None) -> Outcome:
    """The installed `kubedistill` command as a user runs it, with a fresh, empty Ray temporary root; `env`
    is added to (or, where a value is None, removed from) this process's environment.

    The root is short and outside pytest's temporary tree: Ray's socket paths must fit in 107 bytes.
    """
    assert KUBEDISTILL is not None, "the kubedistill command is not installed in this venv"
    with tempfile.TemporaryDirectory(prefix="kd-ray-") as ray_root:
        environment = {key: value for key, value in os.environ.items() if key != "RAY_ADDRESS"}
        for key, value in (env or {}).items():
            if value is None:
                environment.pop(key, None)
            else:
                environment[key] = value
        done = subprocess.run(
            [KUBEDISTILL, *args],
            cwd=cwd,
            env={**environment, "RAY_TMPDIR": ray_root},
            capture_output=True,
            text=True,
            timeout=CLI_TIMEOUT_SECONDS,
            check=False,
        )
        sessions = sorted(path.name for path in Path(ray_root).rglob("session_*"))
    return Outcome(done.returncode, done.stdout, done.stderr, sessions)


def kubedistill_concurrently(calls: dict[Any, tuple[Sequence[str], Path]]) -> dict[Any, Outcome]:
    """Each call in a process of its own, as many at once as there are cores (most of each is imports)."""
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        futures = {key: pool.submit(kubedistill, args, cwd) for key, (args, cwd) in calls.items()}
        return {key: future.result() for key, future in futures.items()}


def assert_rejected(outcome: Outcome, file: Path, expected: str) -> None:
    """Exit 1, no traceback, and among `FILE: ...` lines one that starts `FILE: <expected>`."""
    assert outcome.exit_code == 1, outcome.stderr
    assert "Traceback" not in outcome.stderr, outcome.stderr
    assert any(line.startswith(f"{file}: {expected}") for line in outcome.lines), (
        f"no line starting {f'{file}: {expected}'!r} in:\n{outcome.stderr}"
    )


def test_the_ray_probe_sees_a_ray_that_starts(tmp_path: Path) -> None:
    """The control for every `ray_sessions == []` below: a Ray started under the same settings is seen."""
    with tempfile.TemporaryDirectory(prefix="kd-ray-") as ray_root:
        env = {key: value for key, value in os.environ.items() if key != "RAY_ADDRESS"}
        start = "import ray; ray.init(num_cpus=1, include_dashboard=False); ray.shutdown()"
        subprocess.run(
            [sys.executable, "-c", start],
            cwd=tmp_path,
            env={**env, "RAY_TMPDIR": ray_root, "RAY_AUTH_MODE": "disabled"},
            capture_output=True,
            timeout=CLI_TIMEOUT_SECONDS,
            check=True,
        )
        assert list(Path(ray_root).rglob("session_*")), "a started Ray left no session in RAY_TMPDIR"


# -- bad manifests ------------------------------------------------------------------------------------------

COMMANDS = ("validate", "run")
IN_A_PROCESS = ("unknown-spec-field", "missing-student", "on-policy-without-rollout", "unknown-loss")
"""One of each kind of rejection: strict fields, the schema, a cross-field rule, a runtime plugin name."""


def _manifest_file(root: Path, bad: Bad) -> Path:
    path = root / bad.id / "job.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(apply_changes(bad.base, bad.changes)), encoding="utf-8")
    return path


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("bad", BAD_MANIFESTS, ids=lambda bad: bad.id)
def test_a_bad_manifest_exits_1_printing_only_file_field_problem_lines(
    tmp_path: Path, bad: Bad, command: str
) -> None:
    file = _manifest_file(tmp_path, bad)
    outcome = invoke([command, str(file)])
    assert_rejected(outcome, file, f"{bad.field}: ")
    assert outcome.stdout == ""
    assert all(line.startswith(f"{file}: ") for line in outcome.lines), outcome.stderr


@pytest.fixture(scope="module")
def manifest_processes(
    tmp_path_factory: pytest.TempPathFactory,
) -> dict[tuple[str, str], tuple[Path, Outcome]]:
    root = tmp_path_factory.mktemp("manifests")
    files = {bad.id: _manifest_file(root, bad) for bad in BAD_MANIFESTS if bad.id in IN_A_PROCESS}
    calls = {
        (command, id_): ([command, str(file)], file.parent)
        for id_, file in files.items()
        for command in COMMANDS
    }
    return {key: (files[key[1]], outcome) for key, outcome in kubedistill_concurrently(calls).items()}


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize(
    "bad", [bad for bad in BAD_MANIFESTS if bad.id in IN_A_PROCESS], ids=lambda bad: bad.id
)
def test_the_installed_command_rejects_a_bad_manifest_without_starting_ray(
    manifest_processes: dict[tuple[str, str], tuple[Path, Outcome]], bad: Bad, command: str
) -> None:
    file, outcome = manifest_processes[command, bad.id]
    assert_rejected(outcome, file, f"{bad.field}: ")
    assert outcome.ray_sessions == [], "Ray was started"


# -- bad data -----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BadData:
    id: str
    data: dict[str, Any]
    """What the job's spec.data says (merged into the small job's own)."""
    where: str
    """`file:line` of the bad record, or the spec field of a file-level problem."""
    problem: str
    spec: dict[str, Any] = field(default_factory=dict)
    """Other spec sections of the job."""


def _from_catalogue(bad: BadFile) -> BadData:
    """A row of the data loader's own table, as a job's settings (what `onBadRecord: fail` reports)."""
    _, data = bad.settings("fail")
    return BadData(
        bad.name,
        data.model_dump(mode="json", exclude_defaults=True),
        f"{FILES / bad.name}:{bad.line}",
        bad.problem,
        ON_POLICY if bad.mode == Mode.ON_POLICY else {},
    )


def _train(name: str, **source: Any) -> dict[str, Any]:
    return {"train": {"path": str(FILES / name), **source}}


BAD_DATA = [
    *(_from_catalogue(bad) for bad in BAD_FILES if bad.name != "over_long.jsonl"),
    BadData(
        "truncated_array.json",
        _train("truncated_array.json"),
        f"{FILES / 'truncated_array.json'}:34",
        "invalid JSON: ",
    ),
    # An image for a text model is no bad record to skip: the job is refused, whatever onBadRecord says.
    BadData(
        "image_part.jsonl",
        _train("image_part.jsonl"),
        "spec.data.train",
        f"{FILES / 'image_part.jsonl'}:2 has an image",
    ),
    BadData(
        "empty.jsonl",
        _train("empty.jsonl"),
        str(FILES / "empty.jsonl"),
        "the file holds no records (spec.data.train.path)",
    ),
    BadData(
        "blank_lines.jsonl",
        _train("blank_lines.jsonl"),
        str(FILES / "blank_lines.jsonl"),
        "the file holds no records (spec.data.train.path)",
    ),
    # The loader's row uses maxLength 64 with promptMaxLength 64; a manifest cannot (the prompt limit must
    # leave room for a response), and under settings it accepts, the long prompt is cut, not refused.
    BadData(
        "over_long.jsonl",
        {**_train("over_long.jsonl"), "maxLength": 64, "promptMaxLength": 64},
        "spec.data.promptMaxLength",
        "must be less than spec.data.maxLength",
    ),
    # A vision-language teacher's tokenizer is not a text student's: the picture is named, not the algorithm.
    BadData(
        "image_part.jsonl-vision-teacher",
        _train("image_part.jsonl"),
        "spec.data.train",
        f"{FILES / 'image_part.jsonl'}:2 has an image, but spec.student.model ({{root}}/student) has "
        "no image processor",
        {"teacher": {"model": "{root}/vision-teacher"}},
    ),
    # DeepSeek-R1's template renders tool calls only where content is null, which transformers never passes.
    BadData(
        "deepseek_r1_tool_call.jsonl",
        _train("deepseek_r1_tool_call.jsonl"),
        f"{FILES / 'deepseek_r1_tool_call.jsonl'}:1",
        "the chat template renders tool calls only in a message whose content is null (it tests `content is "
        "none`",
        {"student": {"tokenizer": "{root}/templates/deepseek_r1_distill"}},
    ),
    BadData(
        "missing-file",
        _train("no_such_file.jsonl"),
        "spec.data.train.path",
        f"cannot read '{FILES / 'no_such_file.jsonl'}': No such file or directory",
    ),
    BadData(
        "records.csv",
        _train("records.csv"),
        "spec.data.train.format",
        "cannot tell the format of",
    ),
    BadData(
        "corrupt.jsonl.gz",
        _train("corrupt.jsonl.gz"),
        "spec.data.train.path",
        f"cannot read '{FILES / 'corrupt.jsonl.gz'}': the gzip data is corrupt",
    ),
    BadData(
        "no_data_files",
        _train("no_data_files"),
        "spec.data.train.path",
        f"the folder '{FILES / 'no_data_files'}' holds no data files",
    ),
    BadData(
        "glob-matching-nothing",
        _train("shard-*.jsonl"),
        "spec.data.train.path",
        f"no file matches '{FILES / 'shard-*.jsonl'}'",
    ),
    BadData(
        "chats-without-chat-template",
        {**_train("unknown_role.jsonl"), "applyChatTemplate": False},
        "spec.data.applyChatTemplate",
        "chat records need the chat template",
    ),
    BadData(
        "bad-eval-record",
        {"eval": {"path": str(FILES / "truncated_json.jsonl")}},
        f"{FILES / 'truncated_json.jsonl'}:3",
        "invalid JSON: Unterminated string",
    ),
    BadData(
        "missing-eval-file",
        {"eval": {"path": str(FILES / "no_such_file.jsonl")}},
        "spec.data.eval.path",
        "cannot read",
    ),
]


TRL_TEMPLATES = Path(trl.__file__).parent / "chat_templates"
REAL_TEMPLATES = ("deepseek_r1_distill",)
"""Models' own chat templates, each saved as a tokenizer the rows above name (`{root}/templates/<name>`)."""


@pytest.fixture(scope="module")
def tiny_world(tmp_path_factory: pytest.TempPathFactory) -> TinyWorld:
    """Tiny models with the tokenizer the loader's own tests use, so their expected messages hold here."""
    root = tmp_path_factory.mktemp("tiny")
    tokenizer = build_tokenizer(CORPUS, vocab_size=512)
    good = root / "train.jsonl"
    good.write_text(
        '{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "4"}]}\n'
    )
    for template in REAL_TEMPLATES:
        templated = copy.deepcopy(tokenizer)
        templated.chat_template = (TRL_TEMPLATES / f"{template}.jinja").read_text()
        templated.save_pretrained(root / "templates" / template)
    save_tiny_vlm(root / "vision-teacher", build_vlm_tokenizer(CORPUS), TEACHER)
    return TinyWorld(
        root=root,
        teacher=save_tiny(root / "teacher", tokenizer, TEACHER, seed=0),
        student=save_tiny(root / "student", tokenizer, STUDENT, seed=1),
        train=good,
        eval=good,
    )


@pytest.fixture(scope="module")
def bad_data_jobs(tiny_world: TinyWorld, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A small job per row, each in a folder of its own (the command's working directory)."""
    root = tmp_path_factory.mktemp("bad-data")
    files = {}
    for bad in BAD_DATA:
        files[bad.id] = root / bad.id / "job.yaml"
        files[bad.id].parent.mkdir()
        spec = _fill(bad.spec, {"root": str(tiny_world.root)})
        manifest = job_manifest(tiny_world, "bad-data", data=bad.data, **spec)
        files[bad.id].write_text(yaml.safe_dump(manifest), encoding="utf-8")
    return files


@pytest.mark.parametrize("bad", BAD_DATA, ids=lambda bad: bad.id)
def test_a_run_on_bad_data_exits_1_naming_where_and_what(
    tiny_world: TinyWorld, bad_data_jobs: dict[str, Path], bad: BadData
) -> None:
    file = bad_data_jobs[bad.id]
    problem = bad.problem.replace("{root}", str(tiny_world.root))
    assert_rejected(invoke(["run", str(file)]), file, f"{bad.where}: {problem}")


DATA_IN_A_PROCESS = ("truncated_json.jsonl", "empty.jsonl", "chats-without-chat-template")
"""A bad record, a file-level problem, settings that fit no record: each kind of data error the command
catches."""


@pytest.fixture(scope="module")
def data_processes(bad_data_jobs: dict[str, Path]) -> dict[str, Outcome]:
    calls = {id_: (["run", str(bad_data_jobs[id_])], bad_data_jobs[id_].parent) for id_ in DATA_IN_A_PROCESS}
    return kubedistill_concurrently(calls)


@pytest.mark.parametrize(
    "bad", [bad for bad in BAD_DATA if bad.id in DATA_IN_A_PROCESS], ids=lambda bad: bad.id
)
def test_the_installed_command_rejects_bad_data_before_starting_ray(
    bad_data_jobs: dict[str, Path], data_processes: dict[str, Outcome], bad: BadData
) -> None:
    outcome = data_processes[bad.id]
    assert_rejected(outcome, bad_data_jobs[bad.id], f"{bad.where}: {bad.problem}")
    assert outcome.ray_sessions == [], "Ray was started"


def test_every_bad_data_file_has_a_row() -> None:
    assert {path.name for path in FILES.iterdir()} <= {bad.id for bad in BAD_DATA}


# -- mistakes in the job's surroundings ----------------------------------------------------------------------


@dataclass(frozen=True)
class BadSetting:
    """A job whose manifest is valid but whose surroundings are not: caught before Ray starts."""

    id: str
    expected: str
    """`where: problem` the line must start with; {placeholders} are filled from the test's world."""
    spec: dict[str, Any] = field(default_factory=dict)
    args: tuple[str, ...] = ()
    env: dict[str, str | None] = field(default_factory=dict)


ONE_RECORD_BATCHES = {
    "training": {"globalBatchSize": 1, "microBatchSize": 1},
    "student": {"replicas": 1},
}
"""The world's one record fills a global batch: the row gets past that check to its own."""

BAD_SETTINGS = [
    BadSetting(
        "local-model-path-missing",
        "spec.student.model: no such directory 'demo-output/assets/student-inti'",
        {"student": {"model": "demo-output/assets/student-inti"}},
    ),
    BadSetting(
        "relative-tokenizer-path-missing",
        "spec.student.tokenizer: no such directory './tokenizer'",
        {"student": {"tokenizer": "./tokenizer"}},
    ),
    BadSetting(
        "model-directory-without-config",
        "spec.teacher.model: '{root}' holds no config.json: not a Hugging Face model directory",
        {"teacher": {"model": "{root}"}},
    ),
    BadSetting(
        "hub-name-not-in-the-offline-cache",
        "spec.student.model: no such directory 'student-inti', and no model of that name in the Hugging Face "
        "cache (HF_HUB_OFFLINE is set)",
        {"student": {"model": "student-inti"}},
        env={"HF_HUB_OFFLINE": "1"},
    ),
    BadSetting(
        "hub-unreachable",
        "spec.teacher.model: no such directory 'kubedistill/no-such-teacher', and the Hugging Face Hub could "
        "not be asked for it",
        {"teacher": {"model": "kubedistill/no-such-teacher"}},
        env={"HF_HUB_OFFLINE": None, "HF_ENDPOINT": "http://127.0.0.1:{closed_port}"},
    ),
    BadSetting(
        "output-path-unwritable",
        "spec.output.path: cannot write to '{a_file}/out': Not a directory",
        {"output": {"path": "{a_file}/out"}},
    ),
    BadSetting(
        "output-option-unwritable",
        "--output: cannot write to '{a_file}/out': Not a directory",
        args=("--output", "{a_file}/out"),
    ),
    BadSetting(
        "checkpoint-path-unwritable",
        "spec.checkpoint.path: cannot write to '{a_file}/ckpt': Not a directory",
        {"checkpoint": {"path": "{a_file}/ckpt"}},
    ),
    BadSetting(
        "checkpoint-of-another-job",
        "spec.checkpoint.path: cannot resume from {root}/shared-ckpt/step-00000002 (step 2): it is a "
        "checkpoint of job another-job, not of this job bad-setting (the two jobs share the folder)",
        {"checkpoint": {"path": "{root}/shared-ckpt"}, **ONE_RECORD_BATCHES},
    ),
    BadSetting(
        "resume-from-no-checkpoint",
        "spec.checkpoint.resumeFrom: no checkpoint at '{root}/no-such-ckpt'",
        {"checkpoint": {"resumeFrom": "{root}/no-such-ckpt"}, **ONE_RECORD_BATCHES},
    ),
    BadSetting(
        "dataset-smaller-than-a-global-batch",
        "spec.training.globalBatchSize: 16 is more than the 1 training records (spec.data.train)",
    ),
    BadSetting(
        "dataset-smaller-than-a-rollout-batch",
        "spec.rollout.batchSize: 8 is more than the 1 training records (spec.data.train)",
        ON_POLICY,
    ),
    BadSetting(
        "generation-step-template-file-missing",
        "spec.generation.steps[0].templateFile: cannot read {root}/judge.txt (No such file or directory)",
        {
            "generation": {
                "maxNewTokens": 8,
                "steps": [{"kind": "judge", "threshold": 5, "templateFile": "{root}/judge.txt"}],
            }
        },
    ),
    BadSetting(
        "metrics-port-option-busy",
        "--metrics-port: port {busy_port} is busy",
        args=("--metrics-port", "{busy_port}"),
    ),
    BadSetting(
        "metrics-port-variable-busy",
        "KUBEDISTILL_METRICS_PORT: port {busy_port} is busy",
        env={"KUBEDISTILL_METRICS_PORT": "{busy_port}"},
    ),
    BadSetting(
        "mlflow-server-down",
        "spec.tracking.mlflow.trackingUri: no MLflow server answers at http://127.0.0.1:{closed_port}",
        {"tracking": {"mlflow": {"trackingUri": "http://127.0.0.1:{closed_port}"}}},
    ),
    BadSetting(
        "flash-attention-without-a-gpu",
        "spec.student.attention: flash_attention_2 runs on CUDA GPUs only, and this machine has none",
        {"student": {"attention": "flash_attention_2"}},
    ),
    BadSetting(
        "liger-kernels-without-a-gpu",
        "spec.student.ligerKernel: Liger's kernels are Triton kernels for CUDA GPUs, and this machine has "
        "none",
        {"student": {"ligerKernel": True}},
    ),
    BadSetting(
        "ray-address-unreachable",
        "RAY_ADDRESS=127.0.0.1:{closed_port}: no Ray cluster answers there",
        env={"RAY_ADDRESS": "127.0.0.1:{closed_port}"},
    ),
]


def _fill(value: Any, names: dict[str, str]) -> Any:
    if isinstance(value, str):
        return value.format(**names)
    if isinstance(value, dict):
        return {key: _fill(inner, names) for key, inner in value.items()}
    if isinstance(value, tuple | list):
        return type(value)(_fill(inner, names) for inner in value)
    return value


@pytest.fixture(scope="module")
def setting_processes(
    tiny_world: TinyWorld, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, tuple[Path, str, Outcome]]]:
    """Every row run as the installed command, next to a busy port (something listens) and a closed one
    (bound, not listening: connections are refused at once), and a checkpoint folder of another job."""
    root = tmp_path_factory.mktemp("bad-settings")
    a_file = root / "a-file"
    a_file.write_text("not a directory")
    shared = CheckpointDirectory(root / "shared-ckpt", keep=1)
    another_job = {"spec": {}, "data": {"records": 1, "sha256": ""}, "job": "another-job"}
    shared.commit(shared.staging(2), TrainerState(step=2, epoch=0, batch_in_epoch=2), another_job)
    with socket.create_server(("", 0)) as busy, socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        names = {
            "root": str(root),
            "a_file": str(a_file),
            "busy_port": str(busy.getsockname()[1]),
            "closed_port": str(closed.getsockname()[1]),
        }
        files, calls = {}, {}
        for bad in BAD_SETTINGS:
            files[bad.id] = root / bad.id / "job.yaml"
            files[bad.id].parent.mkdir()
            manifest = job_manifest(tiny_world, "bad-setting", **_fill(bad.spec, names))
            files[bad.id].write_text(yaml.safe_dump(manifest), encoding="utf-8")
            args = ["run", str(files[bad.id]), *_fill(bad.args, names)]
            calls[bad.id] = (args, files[bad.id].parent, _fill(bad.env, names))
        with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
            futures = {key: pool.submit(kubedistill, *call) for key, call in calls.items()}
            outcomes = {key: future.result() for key, future in futures.items()}
        yield {bad.id: (files[bad.id], _fill(bad.expected, names), outcomes[bad.id]) for bad in BAD_SETTINGS}


@pytest.mark.parametrize("bad", BAD_SETTINGS, ids=lambda bad: bad.id)
def test_a_mistake_in_the_surroundings_exits_1_in_one_line_before_ray_starts(
    setting_processes: dict[str, tuple[Path, str, Outcome]], bad: BadSetting
) -> None:
    file, expected, outcome = setting_processes[bad.id]
    assert_rejected(outcome, file, expected)
    assert outcome.ray_sessions == [], "Ray was started"
