"""``python -m groma_ros.demo``: fake camera + groma_node + one command, end to end.

Starts the fake camera and the node as separate processes (as ``ros2 launch`` would) on a
private ROS domain with localhost-only discovery and the large-message DDS profile, waits until
the node is active, sends "pick up the blue mug", prints the detection and the grounded text,
compares the box with the scene's ground truth, prints the target's 3D position (the camera also
publishes depth and camera_info) next to the true centre of its visible surface, writes the
annotated image to a PNG, and shuts everything down.  Exit status 0 when the command was
grounded (status OK), 1 otherwise.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Optional

__all__ = ["box_iou", "find_config", "main"]

#: Scene with exactly one blue mug (and a purple bowl) in today's world; searched onwards if not.
DEMO_SEED_HINT = 113


def find_config(name: str) -> Path:
    """``config/<name>`` from the source tree, or ``share/groma_ros/config/<name>`` when installed."""
    candidates = [Path(__file__).resolve().parents[1] / "config" / name]
    prefixes = [p for p in os.environ.get("AMENT_PREFIX_PATH", "").split(os.pathsep) if p] + [sys.prefix]
    candidates += [Path(p) / "share" / "groma_ros" / "config" / name for p in prefixes]
    for path in candidates:
        if path.is_file():
            return path
    raise FileNotFoundError(f"{name} not found in {', '.join(str(c.parent) for c in candidates)}")


def _demo_seed(color: str, kind: str) -> int:
    from groma_core.world import render_scene

    for seed in range(DEMO_SEED_HINT, DEMO_SEED_HINT + 500):
        if sum(o.color == color and o.kind == kind for o in render_scene(seed).objects) == 1:
            return seed
    return DEMO_SEED_HINT


def _ros_environment() -> dict[str, str]:
    """This process's environment made private: own domain, localhost discovery, SHM profile."""
    env = dict(os.environ)
    env.pop("RMW_IMPLEMENTATION", None)  # the PyPI ROS has only Fast DDS; anything else exits 102
    env["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
    # A domain of its own so a running robot or a second demo is not seen: 215..232 is the
    # upper range of ids whose DDS ports stay below Linux's ephemeral ports (and apart from the
    # test suite's 1..100). Drawn at random, not from the pid: pids repeat across containers.
    env["ROS_DOMAIN_ID"] = env.get("GROMA_DEMO_DOMAIN_ID") or str(215 + random.SystemRandom().randrange(18))
    # 640x480 rgb8 frames (900 KB) are lost by best-effort UDP; the profile uses shared memory.
    env["FASTDDS_DEFAULT_PROFILES_FILE"] = str(find_config("fastdds_large_shm.xml"))
    return env


def _stop(proc: subprocess.Popen, name: str) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)  # rclpy's handler: clean shutdown
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            print(f"{name} did not stop on SIGINT; killing it", file=sys.stderr)
            proc.kill()
            proc.wait()


def main(argv: Optional[list[str]] = None) -> int:
    """Run the demo; see the module docstring."""
    parser = argparse.ArgumentParser(prog="python -m groma_ros.demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--command", default="pick up the blue mug")
    parser.add_argument("--seed", type=int, help="scene seed (default: a scene with exactly one blue mug)")
    parser.add_argument("--model", default="", help="model directory (default: the embedded groma-tiny)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--depth-encoding", choices=("32FC1", "16UC1"), default="32FC1", help="the camera's depth encoding")
    parser.add_argument("--out", type=Path, default=Path("demo_annotated.png"), help="annotated image PNG")
    parser.add_argument("--timeout", type=float, default=180.0, help="seconds for start-up and for the result")
    args = parser.parse_args(argv)

    env = _ros_environment()
    os.environ.update({k: env[k] for k in ("ROS_AUTOMATIC_DISCOVERY_RANGE", "ROS_DOMAIN_ID", "FASTDDS_DEFAULT_PROFILES_FILE")})
    os.environ.pop("RMW_IMPLEMENTATION", None)
    seed = args.seed if args.seed is not None else _demo_seed("blue", "mug")
    print(f"ROS_DOMAIN_ID={env['ROS_DOMAIN_ID']}, scene seed {seed}, command {args.command!r}")

    logs = Path(tempfile.mkdtemp(prefix="groma_demo_"))
    python = [sys.executable, "-m"]
    commands = {
        "fake_camera": python + [
            "groma_ros.fake_camera", "--ros-args", "-p", f"seed:={seed}", "-p", "rate:=10.0",
            "-p", "publish_depth:=true", "-p", f"depth_encoding:={args.depth_encoding}",
        ],
        "groma_node": python + [
            "groma_ros.node", "--ros-args", "--params-file", str(find_config("groma.yaml")),
            "-p", f"device:={args.device}",
            # rcl cannot parse an empty override ("model_path:="); the params file's "" means embedded
            *(["-p", f"model_path:={args.model}"] if args.model else []),
        ],
    }
    procs: dict[str, subprocess.Popen] = {}
    import rclpy

    from groma_ros.command_client import CommandClient, format_result
    from groma_ros.conversions import boxes_of
    from groma_ros.msg import GroundingResult
    from groma_ros.spatial import targets_3d

    client = None
    ok = False
    try:
        for name, cmd in commands.items():
            with open(logs / f"{name}.log", "w") as log:
                procs[name] = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
        rclpy.init()
        client = CommandClient(node_name="groma_demo")
        start = time.monotonic()
        # Up = the node subscribes `command`; fail fast if a process died (its log says why).
        while not client.wait_for_node(1.0):
            dead = [n for n, p in procs.items() if p.poll() is not None]
            if dead or time.monotonic() - start > args.timeout:
                culprit = dead[0] if dead else "groma_node"
                why = f"{culprit} exited" if dead else f"groma_node not active after {args.timeout:g} s"
                log_text = (logs / f"{culprit}.log").read_text()[-3000:]
                print(f"demo failed: {why}; its log:\n{log_text}", file=sys.stderr)
                return 1
        print(f"groma_node active after {time.monotonic() - start:.1f} s")
        reply = None
        for _ in range(20):  # the camera's first frames may still be on their way
            reply = client.send(args.command, args.timeout, want_annotated=True)
            if reply is None or not _before_first_frames(reply.result):
                break
            time.sleep(0.5)
        if reply is None:
            print(f"demo failed: no result within {args.timeout:g} s", file=sys.stderr)
            return 1
        result = reply.result
        print(format_result(result))
        from groma_core.world import render_scene

        truth = [o for o in render_scene(seed).objects if f"{o.color} {o.kind}" in args.command]
        spatial = targets_3d(result)
        for det_id, phrase, score, box in boxes_of(result):
            target = spatial.get(det_id)
            for obj in truth:
                print(f"{det_id} {phrase!r}: IoU with the true {obj.color} {obj.kind} = {box_iou(box, obj.box_xyxy):.2f}")
                if target is not None and target.center is not None:
                    error = sum((a - b) ** 2 for a, b in zip(target.center, obj.visible_surface_center_3d)) ** 0.5
                    print(
                        f"{det_id} {phrase!r}: 3D position {_xyz(target.center)} m in {target.frame_id!r}; "
                        f"true {obj.color} {obj.kind} visible-surface centre {_xyz(obj.visible_surface_center_3d)} m, "
                        f"error {100 * error:.1f} cm"
                    )
            if target is not None and target.center is None:
                print(f"{det_id} {phrase!r}: no 3D position ({target.status}: {target.message})")
        if reply.annotated is not None:
            from PIL import Image as PILImage

            from groma_ros.image_conversion import image_msg_to_rgb

            PILImage.fromarray(image_msg_to_rgb(reply.annotated)).save(args.out)
            print(f"annotated image written to {args.out}")
        else:
            print("no annotated image received", file=sys.stderr)
        ok = result.status == GroundingResult.STATUS_OK and reply.annotated is not None
        return 0 if ok else 1
    except KeyboardInterrupt:
        return 130
    finally:
        if client is not None:
            client.destroy_node()
        rclpy.try_shutdown()
        for name in reversed(list(procs)):
            _stop(procs[name], name)
        if ok:
            shutil.rmtree(logs, ignore_errors=True)
        else:
            print(f"process logs kept in {logs}", file=sys.stderr)


def _before_first_frames(result: Any) -> bool:
    """The node answered before the camera's first colour image, or first depth image, reached it.

    Each subscription matches the camera's publisher on its own, so right after start-up the
    colour images may already arrive while the depth subscription has received nothing yet.
    """
    from groma_ros.msg import Detection3DStatus, GroundingResult
    from groma_ros.spatial import NONE_RECEIVED

    no_depth_yet = (
        result.depth_status == Detection3DStatus.STATUS_NO_DEPTH and result.depth_status_message.endswith(NONE_RECEIVED)
    )
    return result.status == GroundingResult.STATUS_NO_IMAGE or no_depth_yet


def _xyz(point: tuple[float, ...]) -> str:
    return "(" + ", ".join(f"{v:.3f}" for v in point) + ")"


def box_iou(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    """Intersection over union of two pixel xyxy boxes (0 when the union is empty)."""
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - ix * iy
    return ix * iy / union if union > 0 else 0.0


if __name__ == "__main__":
    sys.exit(main())
