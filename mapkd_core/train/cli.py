"""``mapkd-train``: run one training stage from an experiment YAML (config/train/*.yaml).

    mapkd-train --config config/train/student_tiny.yaml --out runs/student_tiny
    torchrun --nproc_per_node 4 -m mapkd_core.train.cli --config config/train/student.yaml --out runs/student

A run resumes from ``<out>/checkpoint.pt`` when it exists (``--no-resume`` refuses to overwrite instead).
``--set key=value`` overrides one config key (dotted, YAML value), e.g. ``--set epochs=2 --set distill.tgpd_coach=0``.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from ..cli import add_debug_flag, command
from ..errors import OutputExistsError, UsageError


def parse_sets(items) -> dict:
    import yaml
    out: dict = {}
    for item in items or []:
        if '=' not in item:
            raise UsageError(f'--set needs key=value, got {item!r}')
        key, value = item.split('=', 1)
        node = out
        parts = key.split('.')
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = yaml.safe_load(value)
    return out


@command('mapkd-train')
def main(argv=None) -> int:
    os.environ.setdefault('ROS_AUTOMATIC_DISCOVERY_RANGE', 'LOCALHOST')
    p = argparse.ArgumentParser(prog='mapkd-train', description=__doc__.split('\n')[0])
    p.add_argument('--config', required=True, help='experiment YAML (config/train/...)')
    p.add_argument('--out', default=None, help='output folder (default: runs/<config name>)')
    p.add_argument('--device', default=None, help='cpu, cuda (default: the GPU when there is one)')
    p.add_argument('--no-resume', action='store_true', help='fail if the output folder has a checkpoint')
    p.add_argument('--set', action='append', metavar='KEY=VALUE', help='override a config key (repeatable)')
    p.add_argument('--quiet', action='store_true')
    add_debug_flag(p)
    args = p.parse_args(argv)

    from .config import load_train_config
    from .trainer import CHECKPOINT, Trainer

    out = Path(args.out) if args.out else Path('runs') / Path(args.config).stem
    cfg = load_train_config(args.config, parse_sets(args.set))
    if args.no_resume and (out / CHECKPOINT).is_file():
        raise OutputExistsError(f'{out / CHECKPOINT} exists (drop --no-resume to continue it, or choose another --out)')
    trainer = Trainer(cfg, out, device=args.device, resume=not args.no_resume, progress=not args.quiet)
    try:
        result = trainer.fit()
    finally:
        trainer.close()
    if trainer.rank == 0:
        last = result['history'][-1] if result['history'] else {}
        print(f'done: {result["epochs"]} epochs, {result["steps"]} steps in {result["seconds"]:.0f} s; '
              f'val mIoU {last.get("val_miou")}; weights {result["weights"]}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
