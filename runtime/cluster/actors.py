"""Handling a group's Ray actors together: waiting on collective calls, and stopping them."""

import socket

import ray
from ray.actor import ActorHandle
from ray.exceptions import GetTimeoutError, RayActorError


def get_all(refs: list[ray.ObjectRef]) -> list:
    """Results of collective calls, in order; the first failure is raised as soon as it happens.

    `ray.get` of a list waits for the first ref before looking at the others, and the ranks of a collective
    whose peer died wait forever: a dead rank must not go unnoticed behind a live, blocked one.
    """
    pending = list(refs)
    while pending:
        ready, pending = ray.wait(pending, num_returns=1)
        ray.get(ready)
    return ray.get(refs)


def stop_actors(actors: list[ActorHandle], graceful: bool = True, timeout: float = 30.0) -> None:
    """Let each actor `close()` its resources, then kill it. After a failure (`graceful=False`) survivors may
    be stuck in a collective with a dead peer, so they are killed without asking."""
    try:
        if graceful:
            ray.get([actor.close.remote() for actor in actors], timeout=timeout)
    except (GetTimeoutError, RayActorError):
        pass  # stuck behind a failed peer, or already dead: killing is all that is left
    finally:
        for actor in actors:
            ray.kill(actor)


def free_port() -> int:
    """A TCP port free on this node now, for a process group or engine this actor is about to host."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("", 0))
        return probe.getsockname()[1]
