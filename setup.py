"""ament_python build of the mapkd_ros package (also installable with plain pip).

`colcon build` in a ROS 2 workspace uses this file unchanged; `pip install .` works too (the Makefile does that).
"""
import os
from glob import glob

from setuptools import find_packages, setup

PACKAGE = 'mapkd_ros'


def tree(src, dst_root):
    """data_files entries that install every file under ``src`` into ``dst_root/src`` keeping the layout."""
    entries = {}
    for path in sorted(glob(os.path.join(src, '**', '*'), recursive=True)):
        if os.path.isfile(path):
            entries.setdefault(os.path.join(dst_root, os.path.dirname(path)), []).append(path)
    return sorted(entries.items())


setup(
    name=PACKAGE,
    version='0.1.0',
    python_requires='>=3.10',
    packages=find_packages(include=['mapkd_core', 'mapkd_core.*', 'mapkd_ros', 'mapkd_ros.*']),
    data_files=[
        ('share/ament_index/resource_index/packages', ['resource/' + PACKAGE]),
        ('share/' + PACKAGE, ['package.xml']),
        *tree('launch', 'share/' + PACKAGE),
        *tree('config', 'share/' + PACKAGE),
        # the bundled real nuScenes keyframe, maps, OSM roads and tracks (CC BY-NC-SA 4.0 / ODbL, see its README)
        *tree('assets', 'share/' + PACKAGE),
    ],
    # the shipped demo student (safetensors, about 5 MB), found next to mapkd_ros/ by the node and mapkd-demo
    package_data={'mapkd_ros': ['weights/*.safetensors', 'weights/*.md']},
    install_requires=['setuptools'],
    zip_safe=True,
    maintainer='mapkd developers',
    maintainer_email='mapkd@users.noreply.github.com',
    description='MapKD camera-only online HD map: distillation training, export and a ROS 2 node.',
    license='Apache-2.0',
    extras_require={'tensorrt': ['tensorrt-cu12']},
    entry_points={
        'console_scripts': [
            'mapkd-inspect-data = mapkd_core.tools.inspect_data:main',
            'mapkd-synth = mapkd_core.tools.synth_cli:main',
            'mapkd-eval = mapkd_core.eval.cli:main',
            'mapkd-train = mapkd_core.train.cli:main',
            'mapkd-export = mapkd_core.runtime.cli:main',
            'mapkd-import = mapkd_core.models.import_ref:main',
            'student_node = mapkd_ros.student_node:main',
            'mapkd-bag-convert = mapkd_ros.bag.convert:main',
            'mapkd-bag-play = mapkd_ros.bag.play:main',
            'mapkd-demo = mapkd_ros.demo:main',
        ],
    },
)
