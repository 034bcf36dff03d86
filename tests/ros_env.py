"""Shared ROS 2 set-up for the test suite (imported by conftest.py; reuse it).

Why each setting (facts from shared/guides/ros_from_pypi.md):
  * ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST keeps discovery and traffic on this
    host. ROS_LOCALHOST_ONLY would be silently ignored by this ROS 2 (kilted).
  * A ROS_DOMAIN_ID of our own, drawn at random once per pytest process, and
    a namespace of our own (TEST_NAMESPACE) for every node and topic the tests
    make, so concurrent test runs on the same host (colleagues, CI jobs in
    containers, where pids repeat) do not see each other's topics: a shared
    domain alone would let another run's /image overwrite ours. Subprocesses
    started by a test inherit the domain.
  * FASTDDS_DEFAULT_PROFILES_FILE points at the project's shared-memory profile,
    the configuration the node runs with, so large images are tested as they
    are deployed.
  * RMW_IMPLEMENTATION is never set: the PyPI wheels have only Fast DDS, and any
    other value makes the process exit with code 102. An inherited value is
    removed for the same reason.
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Mapping

REPO_ROOT: Path = Path(__file__).resolve().parents[1]
SHM_PROFILE: Path = REPO_ROOT / "config" / "fastdds_large_shm.xml"

# Domain ids 1..100 are valid with Fast DDS' default port mapping on Linux and
# leave 0, the default every unconfigured ROS 2 process uses, alone.
_DOMAIN_COUNT = 100
_RANDOM = random.SystemRandom()  # not the seeded `random`: tests seed that one

#: This test run's ROS_DOMAIN_ID (1..100), the same for every call in this process.
DOMAIN_ID: int = 1 + _RANDOM.randrange(_DOMAIN_COUNT)

#: Namespace (absolute) for this test run's nodes and topics, unique per run.
TEST_NAMESPACE: str = f"/groma_test_{os.getpid()}_{_RANDOM.getrandbits(32):08x}"


def ros_args_namespace() -> list[str]:
    """``--ros-args`` remapping that puts every node of a process (or rclpy context) into TEST_NAMESPACE."""
    return ["-r", f"__ns:={TEST_NAMESPACE}"]


def ros_test_environment(base: Mapping[str, str] | None = None) -> dict[str, str]:
    """A copy of `base` (default os.environ) with the test isolation settings.

    An explicit GROMA_TEST_ROS_DOMAIN_ID in `base` wins over the random id,
    for reproducing a run by hand.
    """
    env = dict(os.environ if base is None else base)
    env.pop("RMW_IMPLEMENTATION", None)
    env.pop("ROS_LOCALHOST_ONLY", None)  # ignored anyway; avoid misleading readers
    domain = env.get("GROMA_TEST_ROS_DOMAIN_ID") or str(DOMAIN_ID)
    env["ROS_DOMAIN_ID"] = domain
    env["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
    env["FASTDDS_DEFAULT_PROFILES_FILE"] = str(SHM_PROFILE)
    return env


def apply_ros_test_environment() -> dict[str, str]:
    """Put the isolation settings into os.environ of this process.

    Must run before the first rclpy context is initialised: the domain id is
    read by rclpy.init() and the DDS profile when the first node is created.
    Returns the values applied.
    """
    env = ros_test_environment()
    for key in ("RMW_IMPLEMENTATION", "ROS_LOCALHOST_ONLY"):
        os.environ.pop(key, None)
    applied = {key: env[key] for key in
               ("ROS_DOMAIN_ID", "ROS_AUTOMATIC_DISCOVERY_RANGE",
                "FASTDDS_DEFAULT_PROFILES_FILE")}
    os.environ.update(applied)
    return applied


def spin_until(executor: object, condition: Callable[[], bool],
               timeout_s: float = 20.0,
               on_idle: Callable[[], None] | None = None,
               idle_period_s: float = 0.2) -> bool:
    """Spin `executor` (an rclpy Executor) until `condition()` holds.

    `on_idle` runs every `idle_period_s`, e.g. to re-publish while discovery
    between processes is still going on. Returns condition() at the end.
    """
    deadline = time.monotonic() + timeout_s
    next_idle = 0.0
    while not condition() and time.monotonic() < deadline:
        if on_idle is not None and time.monotonic() >= next_idle:
            on_idle()
            next_idle = time.monotonic() + idle_period_s
        executor.spin_once(timeout_sec=0.05)  # type: ignore[attr-defined]
    return condition()


def start_python(code: str, **popen_kwargs: object) -> subprocess.Popen[str]:
    """Start `python -c code` with the test ROS environment (same domain), its
    arguments the `--ros-args` that put its nodes into TEST_NAMESPACE."""
    return subprocess.Popen(
        [sys.executable, "-c", code, "--ros-args", *ros_args_namespace()],
        env=ros_test_environment(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **popen_kwargs,  # type: ignore[arg-type]
    )


def stop_process(proc: subprocess.Popen[str], timeout_s: float = 5.0) -> tuple[str, str]:
    """Terminate a helper process started by start_python; return its output."""
    if proc.poll() is None:
        proc.terminate()
    try:
        out, err = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
    return out, err


def find_share_dir(package: str) -> Path:
    """share/<package> of an installed ROS package.

    Looks in AMENT_PREFIX_PATH (set by a colcon workspace's setup.sh) and then
    in sys.prefix, where `pip install` puts the generated interfaces.
    """
    prefixes = [p for p in os.environ.get("AMENT_PREFIX_PATH", "").split(os.pathsep) if p]
    prefixes.append(sys.prefix)
    for prefix in prefixes:
        candidate = Path(prefix) / "share" / package
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(f"share/{package} not found in {prefixes}")
