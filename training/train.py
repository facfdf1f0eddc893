"""Run one training stage from an experiment YAML (same as the ``mapkd-train`` command; works under torchrun).

    python training/train.py --config config/train/student_tiny.yaml --out runs/student_tiny
"""
import sys

from mapkd_core.train.cli import main

if __name__ == '__main__':
    sys.exit(main())
