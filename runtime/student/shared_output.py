"""Exported files readable by the other pods that mount the output volume (an evaluation job, a server),
which often run as another user.

safetensors 0.8.0 writes `model.safetensors` mode 0600 whatever the umask (measured: under umask 022 the
tokenizer and config files beside it come out 0644, the weights 0600). The export is brought to the mode the
umask gives any file written with `open()` (0644 under the usual 022): never looser than that.
"""

import os
from pathlib import Path


def share_exported_files(directory: Path) -> None:
    """The files of `directory` (where `save_pretrained` writes, flat) that this user owns get the mode the
    umask normally gives; folders in it (a checkpoint directory) are left as they are."""
    mode = 0o666 & ~current_umask()
    for path in directory.iterdir():
        if path.is_file() and not path.is_symlink() and path.stat().st_uid == os.geteuid():
            path.chmod(mode)


def current_umask() -> int:
    # Linux shows it in /proc (since 4.7); setting and restoring it would race with other threads' files.
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    umask = os.umask(0o022)
    os.umask(umask)
    return umask
