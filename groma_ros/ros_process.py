"""Running one rclpy node as a process: spin until shutdown, exit cleanly on Ctrl-C.

Shared by the console scripts ``groma_node`` and ``groma_fake_camera`` so that both survive the
same start-up and shut-down races.
"""

from __future__ import annotations

import sys
from typing import Callable, Optional, TypeVar

import rclpy
from rclpy.exceptions import InvalidHandle, InvalidParameterValueException, NotInitializedException
from rclpy.executors import Executor, ExternalShutdownException, SingleThreadedExecutor
from rclpy.impl.implementation_singleton import rclpy_implementation as _rclpy
from rclpy.node import Node

__all__ = ["run_node", "spin"]

RCLError = _rclpy.RCLError  # what rcl calls raise, e.g. on a context that was shut down
NodeT = TypeVar("NodeT", bound=Node)


def spin(executor: Executor) -> None:
    """``executor.spin()`` until shutdown, surviving entities destroyed while it builds its wait set.

    A lifecycle transition destroys subscriptions (deactivate) and publishers (cleanup). When it is
    triggered from a thread other than the executor's (in process: the tests, a composing program),
    rclpy's executor may be adding one of their QoS event handlers to its wait set at that moment and
    then raises ``InvalidHandle``, which ends ``spin()``: every later callback is silently lost
    (ros2/rclpy#1284, open upstream; seen here in the test suite under CPU load). The next pass no
    longer sees the destroyed entity, so spinning on is safe.
    """
    while executor.context.ok():
        try:
            executor.spin()
            return
        except InvalidHandle:
            continue


def run_node(
    args: Optional[list[str]],
    make_node: Callable[[], NodeT],
    *,
    logger_name: str,
    start: Optional[Callable[[NodeT], int]] = None,
    stop: Optional[Callable[[NodeT], None]] = None,
) -> int:
    """Initialise rclpy with ``args`` (default ``sys.argv``), build the node, spin it, clean up.

    ``start(node)`` runs once the node is on the executor; a non-zero return is the exit code and
    ends the process at once (e.g. a model that cannot be loaded). ``stop(node)`` runs before the
    node is destroyed. Returns the process exit code: 0 after Ctrl-C or an external shutdown, 2
    when the constructor rejects a parameter value (the reason is logged as fatal).

    Ctrl-C can land anywhere: while the constructor runs, rclpy's signal thread shuts the
    context down under it (rcl then fails, e.g. "rcl node's context is invalid") and Python
    raises the KeyboardInterrupt only once the C call it interrupted returns, possibly inside
    the clean-up. Both end in exit 0 without a traceback.
    """
    rclpy.init(args=args if args is not None else sys.argv)
    node: Optional[NodeT] = None
    executor = SingleThreadedExecutor()
    try:
        try:
            node = make_node()
        except (ValueError, InvalidParameterValueException) as exc:  # a bad params file or -p value
            rclpy.logging.get_logger(logger_name).fatal(str(exc))
            return 2
        except (RCLError, InvalidHandle, NotInitializedException):
            if rclpy.ok():
                raise
            return 0  # Ctrl-C during start-up
        executor.add_node(node)
        if start is not None:
            code = start(node)
            if code:
                return code
        spin(executor)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        try:
            if node is not None:
                if stop is not None:
                    stop(node)
                executor.remove_node(node)
                node.destroy_node()
            executor.shutdown()
            rclpy.try_shutdown()
        except KeyboardInterrupt:
            pass  # a Ctrl-C during start-up surfacing after the shutdown it caused
    return 0
