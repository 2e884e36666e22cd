"""Leaving Ray: `disconnect` stops the local Ray that `connect` started, the autoscaler's monitor first."""

import json
import subprocess
import sys
import tempfile
import textwrap

SCRIPT = textwrap.dedent(
    """
    import json, signal, time
    import psutil, ray
    from kubedistill.runtime.cluster import session

    session.connect(num_cpus=1)
    node = ray._private.worker._global_node
    kills = []
    kill = type(node)._kill_process_type
    def noting(self, process_type, allow_graceful=False, **options):
        kills.append([process_type, allow_graceful])
        return kill(self, process_type, allow_graceful=allow_graceful, **options)
    type(node)._kill_process_type = noting
    watchdog = session._watchdog.pid
    started = [p for p in psutil.Process().children(recursive=True) if p.pid != watchdog]
    session.disconnect()
    deadline = time.monotonic() + 10
    while any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in started):
        if time.monotonic() > deadline:
            break
        time.sleep(0.1)
    alive = []
    for p in started:
        try:
            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                alive.append(p.name())
        except psutil.NoSuchProcess:
            pass
    print(json.dumps({
        "initialized": ray.is_initialized(),
        "kills": kills,
        "started": len(started),
        "alive": alive,
    }))
    """
)


def test_disconnect_stops_every_process_of_the_local_ray_killing_the_monitor_before_the_gcs_goes() -> None:
    # Ray's shutdown stops the raylet and the GCS gracefully, then the rest; the monitor, sent SIGTERM after
    # the GCS, waits for it until Ray kills it a second later. `disconnect` kills it before.
    with tempfile.TemporaryDirectory(prefix="kd-ray-") as ray_root:
        done = subprocess.run(
            [sys.executable, "-c", SCRIPT],
            cwd=ray_root,  # not the repository root, whose operator/ would shadow the standard library's
            env={"RAY_TMPDIR": ray_root, "PATH": "/usr/bin:/bin"},
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
    assert done.returncode == 0, done.stderr
    outcome = json.loads(done.stdout.strip().splitlines()[-1])
    assert outcome["initialized"] is False
    kills = [tuple(kill) for kill in outcome["kills"]]
    assert kills[0] == ("monitor", False), kills
    assert kills.index(("raylet", True)) < kills.index(("gcs_server", True)), kills
    assert outcome["started"] >= 3, "raylet, GCS and monitor at least"
    assert outcome["alive"] == []
