"""Start the mapkd student_node (and optionally RViz2) on a ROS 2 install.

    ros2 launch mapkd_ros student.launch.py model:=/path/to/student.safetensors [backend:=onnxruntime]
        [device:=cuda] [frame_id:=base_link] [params_file:=my.yaml] [markers_topic:=/map_markers] [rviz:=true]
        [image_topics:=/a/image_rect_compressed,/b/...] [camera_info_topics:=/a/camera_info,...]

Parameters come from ``params_file`` (default: the package's config/student.yaml); a launch argument left empty
keeps the file's value. With ``rviz:=true`` RViz2 starts with config/mapkd.rviz, and one image_transport republisher
per camera decodes its CompressedImage topic to the raw ``.../image_rect`` topic that RViz's Image display reads.

``launch`` and ``launch_ros`` are imported inside ``generate_launch_description`` only, so this file can be imported
(and the node started with ``student_node --ros-args --params-file ...``) where ROS 2 launch is not installed.
"""

# launch argument -> (parameter, description); empty keeps the params file's value
OVERRIDES = {
    'model': ('model', 'weights file (.safetensors); empty: the params file / shipped demo weights'),
    'backend': ('backend', 'inference backend (the allowed names: docs/node.md, parameter backend)'),
    'device': ('device', 'cpu, cuda or cuda:N'),
    'frame_id': ('frame_id', 'frame of the published polylines'),
    'image_topics': ('image_topics', 'comma-separated image topics, one per camera'),
    'camera_info_topics': ('camera_info_topics', 'comma-separated CameraInfo topics, one per camera'),
}
LIST_PARAMETERS = ('image_topics', 'camera_info_topics')


def node_overrides(values: dict) -> dict:
    """Parameter overrides from launch argument values (strings): empty ones are left out, topic lists split."""
    out = {}
    for arg, (param, _) in OVERRIDES.items():
        text = str(values.get(arg, '')).strip()
        if not text:
            continue
        out[param] = [t.strip() for t in text.split(',') if t.strip()] if param in LIST_PARAMETERS else text
    return out


def raw_topic(compressed_topic: str) -> str:
    """The raw image topic RViz shows for a CompressedImage topic: '/X/image_rect_compressed' -> '/X/image_rect',
    '/X/image/compressed' -> '/X/image'."""
    for suffix in ('/compressed', '_compressed'):
        if compressed_topic.endswith(suffix):
            return compressed_topic[:-len(suffix)]
    return compressed_topic + '_raw'


def generate_launch_description():
    from launch import LaunchDescription
    from launch.actions import DeclareLaunchArgument, OpaqueFunction
    from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
    from launch_ros.actions import Node
    from launch_ros.substitutions import FindPackageShare

    from mapkd_core.constants import CAMERAS

    share = FindPackageShare('mapkd_ros')
    args = [
        DeclareLaunchArgument('params_file', default_value=PathJoinSubstitution([share, 'config', 'student.yaml']),
                              description='node parameters (ROS 2 params file)'),
        *[DeclareLaunchArgument(arg, default_value='', description=text) for arg, (_, text) in OVERRIDES.items()],
        DeclareLaunchArgument('markers_topic', default_value='',
                              description='remap the MarkerArray (default: /student_node/map_markers)'),
        DeclareLaunchArgument('rviz', default_value='false',
                              description='also start RViz2 (config/mapkd.rviz) and image republishers for it'),
    ]

    def make_nodes(context, *_, **__):
        values = {arg: LaunchConfiguration(arg).perform(context) for arg in OVERRIDES}
        overrides = node_overrides(values)
        markers = LaunchConfiguration('markers_topic').perform(context).strip()
        nodes = [Node(package='mapkd_ros', executable='student_node', name='student_node', output='screen',
                      parameters=[LaunchConfiguration('params_file'), overrides],
                      remappings=[('~/map_markers', markers)] if markers else [])]
        if LaunchConfiguration('rviz').perform(context).strip().lower() in ('true', '1', 'yes'):
            topics = overrides.get('image_topics') or [f'/{c}/image_rect_compressed' for c in CAMERAS]
            for i, topic in enumerate(t for t in topics if t.endswith('compressed')):
                nodes.append(Node(package='image_transport', executable='republish', name=f'republish_{i}',
                                  arguments=['compressed', 'raw'],
                                  parameters=[{'in_transport': 'compressed', 'out_transport': 'raw'}],
                                  remappings=[('in/compressed', topic), ('out', raw_topic(topic))]))
            nodes.append(Node(package='rviz2', executable='rviz2', name='rviz2', output='screen',
                              arguments=['-d', PathJoinSubstitution([share, 'config', 'mapkd.rviz'])]))
        return nodes

    return LaunchDescription([*args, OpaqueFunction(function=make_nodes)])
