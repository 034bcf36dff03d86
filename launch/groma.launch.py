"""``ros2 launch groma_ros groma.launch.py``: start groma_node (and optionally the fake camera).

Launch arguments:
  namespace    namespace of the nodes and their relative topics (default: none)
  image_topic  camera image topic the node's ``image`` is remapped to (default: ``image``);
               ``image/compressed`` follows as ``<image_topic>/compressed``
  params_file  parameters YAML (default: share/groma_ros/config/groma.yaml)
  model_path   Groma model directory; when given it overrides the params file
               (default: empty = what the params file says, i.e. the embedded model)
  device       torch device; when given it overrides the params file
  depth_topic  depth image topic of the node (sets its ``depth_topic``; default: the params file's)
  camera_info_topic  the depth image's camera_info topic (sets ``camera_info_topic``; default: ditto)
  fake_camera  "true" to also start the synthetic fake camera publishing on image_topic (with
               depth and camera_info on the node's depth topics)

Without a ROS installation (``launch`` is not on PyPI) run the same node as
``groma_node --ros-args --params-file config/groma.yaml -r image:=/camera/image_raw``.
"""

from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node
from launch_ros.substitutions import FindPackageShare


def _nodes(context, *args, **kwargs):
    """Build the nodes once the launch arguments are known (overrides only when given)."""
    arg = {name: LaunchConfiguration(name).perform(context) for name in
           ("namespace", "image_topic", "params_file", "model_path", "device", "fake_camera",
            "depth_topic", "camera_info_topic")}
    overrides = {name: arg[name] for name in ("model_path", "device", "depth_topic", "camera_info_topic") if arg[name]}
    image = arg["image_topic"]
    nodes = [
        Node(
            package="groma_ros",
            executable="groma_node",
            name="groma_node",
            namespace=arg["namespace"],
            parameters=[arg["params_file"], overrides],
            remappings=[("image", image), ("image/compressed", image + "/compressed")],
            output="screen",
            emulate_tty=True,
        )
    ]
    if arg["fake_camera"].lower() in ("true", "1", "yes"):
        nodes.append(
            Node(
                package="groma_ros",
                executable="fake_camera",
                name="fake_camera",
                namespace=arg["namespace"],
                parameters=[{"publish_depth": True}],
                remappings=[("image", image)]
                + [(topic, arg[name]) for topic, name in (("depth", "depth_topic"), ("camera_info", "camera_info_topic"))
                   if arg[name]],
                output="screen",
            )
        )
    return nodes


def generate_launch_description() -> LaunchDescription:
    """The launch description: arguments, then the nodes built from them."""
    default_params = [FindPackageShare("groma_ros"), "/config/groma.yaml"]
    return LaunchDescription(
        [
            DeclareLaunchArgument("namespace", default_value="", description="namespace of the nodes"),
            DeclareLaunchArgument("image_topic", default_value="image", description="camera image topic"),
            DeclareLaunchArgument("params_file", default_value=default_params, description="parameters YAML"),
            DeclareLaunchArgument("model_path", default_value="", description="model directory (overrides params)"),
            DeclareLaunchArgument("device", default_value="", description="torch device (overrides params)"),
            DeclareLaunchArgument("depth_topic", default_value="", description="depth image topic (overrides params)"),
            DeclareLaunchArgument(
                "camera_info_topic", default_value="", description="depth camera_info topic (overrides params)"
            ),
            DeclareLaunchArgument("fake_camera", default_value="false", description="also start the fake camera"),
            OpaqueFunction(function=_nodes),
        ]
    )
