"""Vectorization speed and quality: our vectorizer against the DBSCAN reference (HDMapNet post-processing).

Input: the ground-truth rasters of the synthetic val scenes (scene-0103, scene-0916) at the paper grid (200 x 400),
turned into model-like outputs (one-hot logits, a distinct random embedding per instance, the forward direction
bins). Reports ms per frame (median, p95, after warm-up) and the mAP of each vectorizer's polylines against the
ground-truth polylines (P-MapNet protocol), which is 1.0 for a perfect vectorizer.

    python -m benchmarks.bench_vectorize [--limit 40]
"""
from __future__ import annotations

import argparse
import time

import numpy as np

from benchmarks.harness import summarize, write_result


def outputs_from_raster(raster, rng):
    ids = raster.instance
    table = rng.normal(size=(ids.max() + 1, 16)) * 5.0
    table[0] = 0
    return (raster.semantic.astype(np.float32) * 10, table[ids].transpose(2, 0, 1).astype(np.float32),
            np.eye(37, dtype=np.float32)[raster.direction[0]].transpose(2, 0, 1))


def run(limit: int = 40) -> dict:
    from mapkd_core.config import GridConfig
    from mapkd_core.data.index import NuScenesIndex
    from mapkd_core.data.map_gt import MapGroundTruth
    from mapkd_core.data.synth import SynthConfig
    from mapkd_core.data.synth.cache import synthetic_dataroot
    from mapkd_core.eval.ap import APMeter
    from mapkd_core.eval.dbscan import vectorize_dbscan
    from mapkd_core.eval.vectorize import vectorize

    root = synthetic_dataroot(SynthConfig(scenes=('scene-0103', 'scene-0916'), limit=limit // 2), progress=False)
    grid = GridConfig()
    gt = MapGroundTruth(root, grid)
    rng = np.random.default_rng(0)
    frames = []
    for f in NuScenesIndex(root, 'v1.0-mini', 'mini_val'):
        frames.append((gt.vectors(f.city, f.ego_to_global), outputs_from_raster(gt.raster(f.city, f.ego_to_global),
                                                                                 rng)))
    results = {}
    for name, fn in (('ours', vectorize), ('dbscan', vectorize_dbscan)):
        fn(*frames[0][1], grid)  # warm-up
        times = []
        meter = APMeter(grid)
        for vectors, outs in frames:
            t0 = time.perf_counter()
            pred = fn(*outs, grid)
            times.append(time.perf_counter() - t0)
            meter.update(pred, vectors)
        results[name] = {'ms_per_frame': {k: (v * 1e3 if k != 'runs' else v) for k, v in summarize(times).items()},
                         'map': meter.compute()['map']}
    payload = {'frames': len(frames), 'grid': list(grid.shape), 'results': results,
               'speedup_median': results['dbscan']['ms_per_frame']['median'] / results['ours']['ms_per_frame'][
                   'median']}
    path = write_result('vectorize', payload)
    for name, r in results.items():
        print(f'{name:<7} {r["ms_per_frame"]["median"]:8.1f} ms/frame (p95 {r["ms_per_frame"]["p95"]:.1f})  '
              f'mAP vs GT polylines {r["map"]:.3f}')
    print(f'{len(frames)} frames at {grid.H}x{grid.W}; ours is {payload["speedup_median"]:.0f}x faster -> {path}')
    return payload


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--limit', type=int, default=40, help='frames (half from each val scene)')
    args = p.parse_args(argv)
    run(args.limit)


if __name__ == '__main__':
    main()
