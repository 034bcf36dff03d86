"""``groma_command``: send one command to ``groma_node`` and print the grounded result.

Topic mode (default) publishes on ``command`` and waits for the matching ``grounding`` result
(and its ``detections``); ``--service`` calls ``<node>/ground`` instead, optionally with an image
file and user regions::

    groma_command "pick up the blue mug"
    groma_command --service --image scene.png --region 10,20,200,180 "what is in region 0?"
    groma_command "find the red ball" --save-annotated out.png --ros-args -r __ns:=/robot

Exit status: 0 = result with status OK, 2 = a result with another status (printed),
1 = no node or no result before ``--timeout``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np
import rclpy
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node
from rclpy.qos import QoSProfile, ReliabilityPolicy
from rclpy.utilities import remove_ros_args
from sensor_msgs.msg import Image
from std_msgs.msg import String
from vision_msgs.msg import Detection2DArray

from groma_ros.conversions import boxes_of, status_name, xyxy_to_bbox2d
from groma_ros.image_conversion import image_msg_to_rgb, rgb_to_image_msg
from groma_ros.msg import Detection3DStatus, GroundingResult
from groma_ros.spatial import status_3d_name, targets_3d
from groma_ros.srv import Ground

__all__ = ["CommandClient", "Reply", "format_result", "main"]

# Must match the node's command/result QoS: reliable, and deep enough for a burst.
_QOS = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE)


class Reply:
    """What came back for one command: the result, its detections and annotated image if seen."""

    def __init__(self, result: GroundingResult) -> None:
        self.result = result
        self.detections: Optional[Detection2DArray] = None
        self.annotated: Optional[Image] = None


class CommandClient(Node):
    """A node that sends commands to ``groma_node`` and collects the matching replies.

    Spins its own executor inside the blocking calls, so callers need no executor.
    """

    def __init__(self, node_name: str = "groma_command", groma_node: str = "groma_node", **kwargs: Any) -> None:
        """Create publishers/subscriptions on the relative topics and a client for ``<groma_node>/ground``."""
        super().__init__(node_name, **kwargs)
        self._pub = self.create_publisher(String, "command", _QOS)
        self._results: list[GroundingResult] = []
        self._detections: list[Detection2DArray] = []
        self._annotated: list[Image] = []
        self._sub_result = self.create_subscription(GroundingResult, "grounding", self._results.append, _QOS)
        self.create_subscription(Detection2DArray, "detections", self._detections.append, _QOS)
        self.create_subscription(Image, "annotated_image", self._annotated.append, QoSProfile(depth=5))
        self._client = self.create_client(Ground, f"{groma_node}/ground")
        self._executor = SingleThreadedExecutor(context=self.context)
        self._executor.add_node(self)

    def spin_until(self, done: Callable[[], bool], timeout: float) -> bool:
        """Spin until ``done()`` or ``timeout`` seconds; return ``done()``."""
        deadline = time.monotonic() + timeout
        while not done() and time.monotonic() < deadline:
            self._executor.spin_once(timeout_sec=min(0.05, max(0.0, deadline - time.monotonic())))
        return done()

    def wait_for_node(self, timeout: float) -> bool:
        """Wait until ``groma_node`` is active: it subscribes ``command`` and publishes ``grounding``."""
        return self.spin_until(
            lambda: self._pub.get_subscription_count() > 0 and self._sub_result.get_publisher_count() > 0, timeout
        )

    def send(self, command: str, timeout: float = 60.0, want_annotated: bool = False) -> Optional[Reply]:
        """Publish ``command`` and wait for its result (the first result that echoes the command).

        Returns ``None`` when no active node was found or no result came within ``timeout``.
        ``Reply.detections`` is the matching ``detections`` message when the node published it.
        """
        start = time.monotonic()
        if not self.wait_for_node(timeout):
            return None
        seen = len(self._results)
        self._pub.publish(String(data=command))

        def result() -> Optional[GroundingResult]:
            return next((r for r in self._results[seen:] if r.command == command), None)

        if not self.spin_until(lambda: result() is not None, timeout - (time.monotonic() - start)):
            return None
        reply = Reply(result())
        self._attach(reply, want_annotated)
        return reply

    def call(
        self,
        command: str,
        image: Optional[Image] = None,
        regions: Sequence[Sequence[float]] = (),
        timeout: float = 60.0,
        want_annotated: bool = False,
    ) -> Optional[Reply]:
        """Call ``<groma_node>/ground`` with an optional image and pixel xyxy regions."""
        start = time.monotonic()
        if not self.spin_until(lambda: self._client.service_is_ready(), timeout):
            return None
        request = Ground.Request(command=command, regions=[xyxy_to_bbox2d(r) for r in regions])
        if image is not None:
            request.image = image
        future = self._client.call_async(request)
        if not self.spin_until(future.done, timeout - (time.monotonic() - start)):
            self._client.remove_pending_request(future)
            return None
        reply = Reply(future.result().result)
        self._attach(reply, want_annotated)
        return reply

    def _attach(self, reply: Reply, want_annotated: bool) -> None:
        """Find the detections (by id prefix) and annotated image (by header) of ``reply``."""
        result = reply.result
        if result.status not in (GroundingResult.STATUS_OK, GroundingResult.STATUS_NOT_FOUND):
            return
        prefix = f"{result.command_id}/"

        def same_header(msg: Any) -> bool:
            return msg.header.stamp == result.header.stamp and msg.header.frame_id == result.header.frame_id

        def detections() -> Optional[Detection2DArray]:
            for msg in self._detections:
                ids = [d.id for d in msg.detections]
                if ids and all(i.startswith(prefix) for i in ids):
                    return msg
            # A NOT_FOUND result has an empty array: only the header links them.
            if not result.detections.detections:
                return next((m for m in self._detections if not m.detections and same_header(m)), None)
            return None

        # Both are published before the result, so they are either here or just behind it.
        self.spin_until(lambda: detections() is not None, 1.0)
        reply.detections = detections()
        if want_annotated:
            self.spin_until(lambda: any(same_header(m) for m in self._annotated), 3.0)
            reply.annotated = next((m for m in reversed(self._annotated) if same_header(m)), None)
        self._detections.clear()
        self._annotated.clear()

    def destroy_node(self) -> None:
        """Destroy the node and its private executor."""
        self._executor.remove_node(self)
        self._executor.shutdown()
        super().destroy_node()


def format_result(result: GroundingResult) -> str:
    """Human-readable, multi-line summary of a ``GroundingResult``."""
    lat = result.latency.sec + result.latency.nanosec / 1e9
    age = result.frame_age.sec + result.frame_age.nanosec / 1e9
    lines = [
        f"command #{result.command_id}: {result.command[:200]!r}",
        f"status: {status_name(result.status)} ({result.status_message})",
        f"answer: {result.answer}",
        f"raw:    {result.raw_answer}",
        f"image:  frame_id={result.header.frame_id!r} stamp={result.header.stamp.sec}.{result.header.stamp.nanosec:09d} "
        f"age={age:.3f} s; latency={lat:.3f} s",
    ]
    if result.depth_status != Detection3DStatus.STATUS_NOT_RUN:
        lines.append(f"3d:     {status_3d_name(result.depth_status)} ({result.depth_status_message})")
    boxes = {det_id: (cls, score, xyxy) for det_id, cls, score, xyxy in boxes_of(result)}
    spatial = targets_3d(result)
    for phrase in result.phrases:
        lines.append(f"  phrase {phrase.text!r} [{phrase.start}:{phrase.end}]")
        for det_id in phrase.detection_ids:
            cls, score, (x1, y1, x2, y2) = boxes[det_id]
            lines.append(f"    detection {det_id}: box=({x1:.1f}, {y1:.1f}, {x2:.1f}, {y2:.1f}) score={score:.3f}")
            target = spatial.get(det_id)
            if target is not None and target.center is not None:
                (x, y, z), (sx, sy, sz) = target.center, target.size
                lines.append(
                    f"      3d centre=({x:.3f}, {y:.3f}, {z:.3f}) m size=({sx:.3f}, {sy:.3f}, {sz:.3f}) m "
                    f"in {target.frame_id!r}"
                )
            elif target is not None and target.status not in ("OK", "NOT_RUN"):
                lines.append(f"      3d {target.status}: {target.message}")
    return "\n".join(lines)


def _parse_region(text: str) -> tuple[float, float, float, float]:
    values = [float(v) for v in text.split(",")]
    if len(values) != 4:
        raise argparse.ArgumentTypeError("a region is x1,y1,x2,y2 in pixels")
    return tuple(values)  # type: ignore[return-value]


def main(argv: Optional[list[str]] = None) -> int:
    """Console script ``groma_command``; see the module docstring."""
    argv = list(sys.argv if argv is None else argv)
    parser = argparse.ArgumentParser(prog="groma_command", description=__doc__.split("\n\n")[0])
    parser.add_argument("command", help='e.g. "pick up the blue mug"')
    parser.add_argument("--service", action="store_true", help="call <node>/ground instead of the command topic")
    parser.add_argument("--node", default="groma_node", help="name of the groma node (for the service)")
    parser.add_argument("--image", type=Path, help="image file to send with the service request")
    parser.add_argument("--region", type=_parse_region, action="append", default=[], help="x1,y1,x2,y2 (repeatable)")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for the node and the result")
    parser.add_argument("--save-annotated", type=Path, help="write the annotated image to this PNG")
    args = parser.parse_args(remove_ros_args(argv)[1:])
    if (args.image or args.region) and not args.service:
        parser.error("--image and --region need --service")

    rclpy.init(args=argv)
    client = CommandClient(groma_node=args.node)
    try:
        want = args.save_annotated is not None
        if args.service:
            image = None
            if args.image is not None:
                from PIL import Image as PILImage

                image = rgb_to_image_msg(np.asarray(PILImage.open(args.image).convert("RGB")))
            reply = client.call(args.command, image, args.region, args.timeout, want_annotated=want)
        else:
            reply = client.send(args.command, args.timeout, want_annotated=want)
        if reply is None:
            print(f"no result within {args.timeout:g} s: is groma_node running and active "
                  f"(same ROS_DOMAIN_ID, namespace)?", file=sys.stderr)
            return 1
        print(format_result(reply.result))
        grounded = reply.result.status in (GroundingResult.STATUS_OK, GroundingResult.STATUS_NOT_FOUND)
        if want and grounded:  # other statuses have no image to annotate
            if reply.annotated is None:
                print("no annotated image received (publish_annotated_image off?)", file=sys.stderr)
            else:
                from PIL import Image as PILImage

                PILImage.fromarray(image_msg_to_rgb(reply.annotated)).save(args.save_annotated)
                print(f"annotated image written to {args.save_annotated}")
        return 0 if reply.result.status == GroundingResult.STATUS_OK else 2
    except KeyboardInterrupt:
        return 130
    finally:
        client.destroy_node()
        rclpy.try_shutdown()


if __name__ == "__main__":
    sys.exit(main())
