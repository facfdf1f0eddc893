"""Evaluate a checkpoint: IoU, vector AP, frames/s (same as the ``mapkd-eval`` command).

    python training/eval.py --weights W.safetensors --data data/synthetic.yaml --split mini_val --pictures 4
"""
import sys

from mapkd_core.eval.cli import main

if __name__ == '__main__':
    sys.exit(main())
