"""``mapkd-eval``: evaluate a checkpoint on a split: IoU per class, mIoU, vector AP, frames/s; JSON + table + PNGs.

    mapkd-eval --weights runs/student/student.safetensors --data config/data/synthetic.yaml --split mini_val \\
               [--model-config config/models/student_tiny.yaml] [--out outputs/eval] [--pictures 4] [--limit N]
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from ..cli import add_debug_flag, command


@command('mapkd-eval')
def main(argv=None) -> int:
    os.environ.setdefault('ROS_AUTOMATIC_DISCOVERY_RANGE', 'LOCALHOST')
    p = argparse.ArgumentParser(prog='mapkd-eval', description=__doc__.split('\n')[0])
    p.add_argument('--weights', required=True, help='a .safetensors model file or a .pt training checkpoint')
    p.add_argument('--model-config', default=None, help='model YAML or shipped name (default: embedded in weights)')
    p.add_argument('--data', default='data/synthetic.yaml',
                   help='data config: a YAML path or a shipped name under config/ (default data/synthetic.yaml)')
    p.add_argument('--dataroot', default=None, help='override dataset.dataroot')
    p.add_argument('--version', default=None, help='override dataset.version')
    p.add_argument('--split', default='mini_val')
    p.add_argument('--out', default='outputs/eval', help='folder for report.json and pictures')
    p.add_argument('--pictures', type=int, default=0, help='save BEV pictures of the first N samples')
    p.add_argument('--samples', default='', help='comma-separated sample tokens to draw (instead of the first N)')
    p.add_argument('--limit', type=int, default=0, help='evaluate N samples evenly spread over the split')
    p.add_argument('--batch-size', type=int, default=2)
    p.add_argument('--workers', type=int, default=0)
    p.add_argument('--device', default='cpu', help='cpu, cuda, cuda:N')
    p.add_argument('--thresholds', default='0.5,1.0,1.5', help='Chamfer thresholds in metres')
    p.add_argument('--bidirectional', action='store_true', help="HDMapNet's variant: bidirectional CD, no IoU gate")
    p.add_argument('--by-scene', action='store_true', help='also print IoU / mIoU / mAP per scene (always in the JSON)')
    p.add_argument('--cache-prefix', action='store_true',
                   help='read the camera encoders\' prefix (stem and first blocks) from the training cache, storing '
                        'the frames not there yet: for several models with the same frozen prefix on the same frames')
    p.add_argument('--quiet', action='store_true')
    add_debug_flag(p)
    args = p.parse_args(argv)

    from ..config import load_config
    from ..errors import UsageError
    from ..models.io import load_any
    from ..paths import config_dir
    from .ap import APConfig
    from .evaluate import evaluate, format_table, write_report

    data_path = Path(args.data)
    if not data_path.is_file():
        data_path = config_dir() / args.data
    overrides = {'dataset': {k: v for k, v in (('dataroot', args.dataroot), ('version', args.version)) if v}}
    data_cfg = load_config(data_path, overrides=overrides)
    model = load_any(args.weights, args.model_config, args.device)
    try:
        thresholds = tuple(float(t) for t in args.thresholds.split(',') if t)
    except ValueError:
        raise UsageError(f'--thresholds: expected comma-separated numbers (metres), got {args.thresholds!r}') from None
    ap_cfg = APConfig.hdmapnet(thresholds) if args.bidirectional else APConfig(thresholds=thresholds)
    out = Path(args.out)
    report = evaluate(model, data_cfg, args.split, device=args.device, batch_size=args.batch_size,
                      workers=args.workers, limit=args.limit or None, ap_cfg=ap_cfg, pictures=args.pictures,
                      picture_tokens=[t for t in args.samples.split(',') if t], out_dir=out / 'pictures',
                      progress=not args.quiet, prefix_cache=args.cache_prefix)
    report['model'] = model.cfg.name
    report['weights'] = str(args.weights)
    report['data_config'] = str(data_path)
    path = write_report(report, out / 'report.json')
    print(format_table(report, scenes=args.by_scene))
    print(f'report: {path}')
    for pic in report['pictures']:
        print(f'picture: {pic}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
