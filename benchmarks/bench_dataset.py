"""Dataset throughput: samples/s of MapDataset.__getitem__ at 128x352 (and its parts), on one CPU process.

Default data: the bundled real keyframe (1600x900 JPEGs, 34k-point LiDAR, singapore-onenorth map), read
repeatedly; the page cache holds the files after warm-up, so this measures decoding and processing, not disk.

    python -m benchmarks.bench_dataset [--config config/data/bundled.yaml] [--repeats 15]
"""
from __future__ import annotations

import argparse
import os

from benchmarks.harness import time_runs, write_result


def run(config: str | None = None, repeats: int = 15, warmup: int = 3) -> dict:
    os.environ.setdefault('ROS_AUTOMATIC_DISCOVERY_RANGE', 'LOCALHOST')
    from mapkd_core.config import load_config
    from mapkd_core.data.dataset import MapDataset
    from mapkd_core.data.lidar import load_lidar
    from mapkd_core.paths import config_path

    cfg = load_config(config or config_path('data/bundled.yaml'))
    ds = MapDataset(cfg)
    frame = ds.frames[0]
    parts = {
        'item': lambda: ds[0],
        'images': lambda: ds.images(frame),
        'lidar': lambda: load_lidar(frame, cfg.dataset.lidar_min_distance, cfg.dataset.lidar_sweeps),
        'map_gt': lambda: ds._map_gt.raster(frame.city, frame.ego_to_global),
        'sd_prior': lambda: ds._sd.raster(frame.city, frame.ego_to_global),
    }
    results = {name: time_runs(fn, warmup=warmup, repeats=repeats) for name, fn in parts.items()}
    payload = {
        'config': str(config or 'config/data/bundled.yaml'),
        'image_size': [cfg.image.height, cfg.image.width],
        'grid': [cfg.grid.H, cfg.grid.W],
        'samples_per_s': 1.0 / results['item']['median'],
        'seconds': results,
    }
    path = write_result('dataset', payload)
    print(f'dataset: {payload["samples_per_s"]:.1f} samples/s at {cfg.image.height}x{cfg.image.width} '
          f'(median {results["item"]["median"] * 1e3:.1f} ms/sample; ' +
          ', '.join(f'{k} {v["median"] * 1e3:.1f} ms' for k, v in results.items() if k != 'item') + f') -> {path}')
    return payload


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--config', default=None, help='data config YAML (default: the bundled keyframe)')
    p.add_argument('--repeats', type=int, default=15)
    args = p.parse_args(argv)
    run(args.config, args.repeats)


if __name__ == '__main__':
    main()
