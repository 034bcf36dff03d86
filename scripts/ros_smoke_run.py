#!/usr/bin/env python3
"""Start a ROS 2 executable, wait until its node is on the graph, stop it with
SIGINT and require a clean exit.

Used by scripts/colcon_check.sh to prove that an installed executable really
starts (imports, creates its node, joins the graph) without loading a model:

    ros_smoke_run.py --node groma_node -- install/groma_ros/lib/groma_ros/groma_node \
        --ros-args -p autostart:=false

The probe and the executable share this process' ROS environment; set
ROS_DOMAIN_ID / ROS_AUTOMATIC_DISCOVERY_RANGE before calling (the check script
does). Exit status 0 on success, 1 with a reason otherwise.
"""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys
import time


def wait_for_node(node_name: str, proc: subprocess.Popen[bytes], timeout_s: float) -> bool:
    """Poll the ROS graph until a node called `node_name` appears or `proc` exits."""
    import rclpy
    from rclpy.context import Context
    from rclpy.node import Node

    context = Context()
    rclpy.init(context=context)
    try:
        probe = Node("groma_smoke_probe", context=context)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and proc.poll() is None:
            if node_name in probe.get_node_names():
                return True
            time.sleep(0.2)
        return False
    finally:
        rclpy.shutdown(context=context)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--node", required=True, help="node name the executable creates")
    parser.add_argument("--timeout", type=float, default=60.0,
                        help="seconds to wait for the node (model imports can be slow)")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- executable [args...]")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("no executable given")

    started = time.monotonic()
    proc = subprocess.Popen(command)
    try:
        seen = wait_for_node(args.node, proc, args.timeout)
        if not seen:
            code = proc.poll()
            why = f"exited with {code}" if code is not None else f"not on the graph after {args.timeout:.0f} s"
            print(f"ros_smoke_run: FAIL: node {args.node!r} {why}", file=sys.stderr)
            return 1
        print(f"ros_smoke_run: node {args.node!r} up after {time.monotonic() - started:.1f} s")
        proc.send_signal(signal.SIGINT)
        try:
            code = proc.wait(timeout=60)  # a loaded 2-core machine needs more than the usual ~1 s
        except subprocess.TimeoutExpired:
            print("ros_smoke_run: FAIL: still running 60 s after SIGINT", file=sys.stderr)
            return 1
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    if code != 0:
        print(f"ros_smoke_run: FAIL: exit status {code} after SIGINT", file=sys.stderr)
        return 1
    print("ros_smoke_run: clean exit after SIGINT")
    return 0


if __name__ == "__main__":
    sys.exit(main())
