"""Shared test helpers."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# The parity fixture made with the original Groma code lives next to the repository:
# /work/main (repo) and /work/shared/fixtures/groma_official_tiny.
OFFICIAL_TINY_FIXTURE = Path(__file__).resolve().parents[1].parent / "shared" / "fixtures" / "groma_official_tiny"


def official_tiny_fixture() -> Path:
    """Path of ``../shared/fixtures/groma_official_tiny``.

    Outside CI a missing fixture skips the calling test; in CI (``CI`` set) it fails, so the parity
    suite can never pass by not running.
    """
    if not (OFFICIAL_TINY_FIXTURE / "checkpoint" / "tokenizer.model").is_file():
        message = f"parity fixture not found at {OFFICIAL_TINY_FIXTURE} (expected ../shared/fixtures next to the repo)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return OFFICIAL_TINY_FIXTURE


@pytest.fixture(scope="session")
def official_fixture_dir() -> Path:
    """The groma_official_tiny fixture directory (test skipped if absent)."""
    return official_tiny_fixture()


# --- ROS 2 test set-up (helpers in ros_env.py) --------------------------------

from typing import Iterator  # noqa: E402

import ros_env  # noqa: E402

# Applied at import time, i.e. before any test module can initialise rclpy.
ROS_TEST_ENV: dict[str, str] = ros_env.apply_ros_test_environment()


def pytest_report_header(config: pytest.Config) -> str:
    return "ROS test env: " + " ".join(f"{k}={v}" for k, v in ROS_TEST_ENV.items())


@pytest.fixture
def ros_context() -> Iterator[object]:
    """A fresh, initialised rclpy Context, shut down after the test.

    Own contexts instead of the global one let tests run in any order and leave
    nothing behind for the next test.
    """
    import rclpy
    from rclpy.context import Context

    context = Context()
    # every node of this context in the test run's own namespace (see ros_env)
    rclpy.init(context=context, args=["pytest", "--ros-args", *ros_env.ros_args_namespace()])
    try:
        yield context
    finally:
        if context.ok():
            rclpy.shutdown(context=context)


@pytest.fixture
def ros_executor(ros_context: object) -> Iterator[object]:
    """A SingleThreadedExecutor on `ros_context`; its nodes are destroyed after the test."""
    from rclpy.executors import SingleThreadedExecutor

    executor = SingleThreadedExecutor(context=ros_context)  # type: ignore[arg-type]
    try:
        yield executor
    finally:
        for node in list(executor.get_nodes()):
            executor.remove_node(node)
            node.destroy_node()
        executor.shutdown()
