"""Export a student to ONNX / TensorRT (same as the ``mapkd-export`` command)."""
import sys

from mapkd_core.runtime.cli import main

if __name__ == '__main__':
    sys.exit(main())
