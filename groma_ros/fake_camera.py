"""``fake_camera``: publishes synthetic tabletop scenes (``groma_core.world``) like an RGB-D camera.

Topics (relative): ``image`` (sensor_msgs/Image, rgb8), and with ``publish_depth``:
``depth`` (optical z, registered to the colour image: same size, pixels and intrinsics; encoding
``depth_encoding``: ``32FC1`` metres or ``16UC1`` millimetres, REP 118) and ``camera_info``
(sensor_msgs/CameraInfo, plumb_bob, no distortion).  All three share one header per frame:
``frame_id`` (default ``camera_color_optical_frame``, the optical frame of both images) and the
current time as stamp, so a consumer matches them exactly.

Parameters: ``seed`` (first scene), ``rate`` (Hz), ``width``, ``height``, ``change_every``
(render scene ``seed + 1``, ``seed + 2``... every N frames; 0 = one scene forever),
``frame_id``, ``publish_depth``, ``depth_encoding``, ``reliability`` (``reliable`` matches every
subscriber).

A scene is rendered once and re-published with fresh stamps, so the rate does not depend on
rendering speed.
"""

from __future__ import annotations

import sys
from typing import Any, Optional

from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor
from rclpy.node import Node
from rclpy.qos import QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CameraInfo, Image
from std_msgs.msg import Header

from groma_core.world import Scene, render_scene
from groma_ros.image_conversion import DEPTH_ENCODINGS, metres_to_depth_image, rgb_to_image_msg
from groma_ros.ros_process import run_node

__all__ = ["FakeCamera", "camera_info_msg", "main"]


def camera_info_msg(scene: Scene, header: Header) -> CameraInfo:
    """``CameraInfo`` of ``scene``'s pinhole camera (no distortion, identity rectification)."""
    k = scene.intrinsics
    info = CameraInfo(header=header, width=int(k.width), height=int(k.height), distortion_model="plumb_bob")
    info.d = [0.0] * 5
    info.k = [k.fx, 0.0, k.cx, 0.0, k.fy, k.cy, 0.0, 0.0, 1.0]
    info.r = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0]
    info.p = [k.fx, 0.0, k.cx, 0.0, 0.0, k.fy, k.cy, 0.0, 0.0, 0.0, 1.0, 0.0]
    return info


class FakeCamera(Node):
    """Publishes one synthetic scene per ``change_every`` frames at ``rate`` Hz."""

    def __init__(self, **kwargs: Any) -> None:
        """Declare parameters, render the first scene and start the publishing timer."""
        kwargs.setdefault("node_name", "fake_camera")
        super().__init__(**kwargs)
        d = ParameterDescriptor
        self.declare_parameter("seed", 0, d(description="Seed of the first scene (groma_core.world.render_scene)."))
        self.declare_parameter(
            "rate", 10.0, d(description="Frames per second.", floating_point_range=[FloatingPointRange(from_value=0.1, to_value=1000.0)])
        )
        self.declare_parameter("width", 640, d(description="Image width in pixels.", integer_range=[IntegerRange(from_value=16, to_value=8192, step=1)]))
        self.declare_parameter("height", 480, d(description="Image height in pixels.", integer_range=[IntegerRange(from_value=16, to_value=8192, step=1)]))
        self.declare_parameter("change_every", 0, d(description="New scene (next seed) every N frames; 0 = never."))
        self.declare_parameter("frame_id", "camera_color_optical_frame", d(description="header.frame_id of every message."))
        self.declare_parameter("publish_depth", False, d(description="Also publish 'depth' and 'camera_info'."))
        self.declare_parameter(
            "depth_encoding", "32FC1", d(description="Encoding of 'depth' (REP 118): 32FC1 (metres) or 16UC1 (millimetres).")
        )
        self.declare_parameter(
            "reliability", "reliable", d(description="QoS reliability of the publishers: reliable or best_effort.")
        )
        p = {n: self.get_parameter(n).value for n in ("seed", "rate", "width", "height", "change_every", "frame_id", "publish_depth", "depth_encoding", "reliability")}
        self._p = p
        policies = {"reliable": ReliabilityPolicy.RELIABLE, "best_effort": ReliabilityPolicy.BEST_EFFORT}
        if p["reliability"] not in policies:
            raise ValueError(f"reliability must be one of {sorted(policies)}, got {p['reliability']!r}")
        if p["depth_encoding"] not in DEPTH_ENCODINGS:
            raise ValueError(f"depth_encoding must be one of {sorted(DEPTH_ENCODINGS)}, got {p['depth_encoding']!r}")
        reliability = policies[p["reliability"]]
        qos = QoSProfile(depth=1, reliability=reliability)
        self._pub_image = self.create_publisher(Image, "image", qos)
        self._pub_depth = self.create_publisher(Image, "depth", qos) if p["publish_depth"] else None
        self._pub_info = self.create_publisher(CameraInfo, "camera_info", qos) if p["publish_depth"] else None
        self._frames = 0
        self._seed = int(p["seed"])
        self._scene = self._render(self._seed)
        self._timer = self.create_timer(1.0 / float(p["rate"]), self._tick)
        self.get_logger().info(
            f"publishing scene {self._seed} ({', '.join(f'{o.color} {o.kind}' for o in self._scene.objects)}) "
            f"at {p['rate']:g} Hz on '{self.resolve_topic_name('image')}'"
        )

    def _render(self, seed: int) -> Scene:
        scene = render_scene(seed, width=int(self._p["width"]), height=int(self._p["height"]))
        # Build the payloads once per scene; each frame only gets a fresh header.
        self._image_msg = rgb_to_image_msg(scene.image)
        self._depth_msg = (
            metres_to_depth_image(scene.depth_m, self._p["depth_encoding"]) if self._p["publish_depth"] else None
        )
        self._info_msg = camera_info_msg(scene, Header()) if self._p["publish_depth"] else None
        return scene

    @property
    def scene(self) -> Scene:
        """The scene being published now."""
        return self._scene

    def _tick(self) -> None:
        change = int(self._p["change_every"])
        if change > 0 and self._frames > 0 and self._frames % change == 0:
            self._seed += 1
            self._scene = self._render(self._seed)
        self._frames += 1
        header = Header(stamp=self.get_clock().now().to_msg(), frame_id=str(self._p["frame_id"]))
        self._image_msg.header = header
        self._pub_image.publish(self._image_msg)
        if self._pub_depth is not None:
            self._depth_msg.header = header
            self._info_msg.header = header
            self._pub_depth.publish(self._depth_msg)
            self._pub_info.publish(self._info_msg)


def main(args: Optional[list[str]] = None) -> int:
    """Console script ``groma_fake_camera`` (standard ``--ros-args``); returns the exit code."""
    return run_node(args, FakeCamera, logger_name="groma_fake_camera")


if __name__ == "__main__":
    sys.exit(main())
