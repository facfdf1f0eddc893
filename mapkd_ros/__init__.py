"""mapkd_ros: the ROS 2 layer (student node, camera sync, message conversion, markers, bag tools, the demo)."""
from pathlib import Path

#: the shipped demo student (trained with the README's commands on the synthetic data; see weights/README.md)
DEMO_WEIGHTS = Path(__file__).resolve().parent / 'weights' / 'student_demo.safetensors'
