"""Bag tools: ``mapkd-bag-convert`` (nuScenes -> rosbag2 with rosbags) and ``mapkd-bag-play`` (rclpy player).

``convert`` needs no ROS install (rosbags is pure Python); ``play`` needs rclpy and the message packages of the
topics it publishes. Import the submodules (``mapkd_ros.bag.convert``, ``mapkd_ros.bag.play``) directly.
"""
from mapkd_core.errors import MapkdError


class BagError(MapkdError, RuntimeError):
    """A bag cannot be written, read or played (the message names the bag, topic or option)."""


__all__ = ['BagError']
