"""Vectorization speed and quality: our vectorizer against the DBSCAN reference (HDMapNet post-processing).

Input: the ground-truth rasters of the synthetic val scenes (scene-0103, scene-0916) at the paper grid (200 x 400),
turned into model-like outputs (one-hot logits, a distinct random embedding per instance, the forward direction
bins). Reports ms per frame (median, p95, after warm-up) and the mAP of each vectorizer's polylines against the
ground-truth polylines (P-MapNet protocol), which is 1.0 for a perfect vectorizer.

The two vectorizers run frame by frame in turn (each frame: ours, then the reference), so that a change of the
machine's load hits both alike, each after a rest of ``--settle`` seconds (so that neither is timed while the other's
leftover worker threads still spin); besides the wall-clock time, the process CPU time per frame is reported (less
sensitive to other processes on the machine), and the load average before and after. ``map_before_speedup`` is
the mAP of our vectorizer before its speed-up (same frames, 2026-11-30): the speed-up keeps every polyline bit for
bit, so ``map`` must equal it.

    python -m benchmarks.bench_vectorize [--limit 40]
"""
from __future__ import annotations

import argparse
import os
import time

import numpy as np

from benchmarks.harness import summarize, write_result

#: mAP of our vectorizer on the default 40 frames before its speed-up (measured 2026-11-30, 17.1 ms / frame then)
MAP_BEFORE_SPEEDUP = 0.9974358974358974
#: seconds of rest before each timed call: the reference's BLAS / OpenMP worker threads keep spinning for a while after
#: it returns, and on this VM's two hyper-threads that slowed the next call of ours by about a quarter (measured
#: 2026-12-01, idle: ours 10.0 ms back to back, 7.8 ms with the reference on one thread)
SETTLE = 0.2


def outputs_from_raster(raster, rng):
    ids = raster.instance
    table = rng.normal(size=(ids.max() + 1, 16)) * 5.0
    table[0] = 0
    return (raster.semantic.astype(np.float32) * 10, table[ids].transpose(2, 0, 1).astype(np.float32),
            np.eye(37, dtype=np.float32)[raster.direction[0]].transpose(2, 0, 1))


def run(limit: int = 40, settle: float = SETTLE) -> dict:
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
    names = {'ours': vectorize, 'dbscan': vectorize_dbscan}
    load_before = os.getloadavg()
    for fn in names.values():
        fn(*frames[0][1], grid)  # warm-up
    times = {n: [] for n in names}
    cpu = {n: [] for n in names}
    meters = {n: APMeter(grid) for n in names}
    for vectors, outs in frames:
        for name, fn in names.items():
            time.sleep(settle)  # the other's leftover threads (see the module docstring) park before the clock starts
            t0, c0 = time.perf_counter(), time.process_time()
            pred = fn(*outs, grid)
            times[name].append(time.perf_counter() - t0)
            cpu[name].append(time.process_time() - c0)
            meters[name].update(pred, vectors)
    results = {name: {'ms_per_frame': {k: (v * 1e3 if k != 'runs' else v) for k, v in summarize(times[name]).items()},
                      'cpu_ms_per_frame': {k: (v * 1e3 if k != 'runs' else v) for k, v in summarize(cpu[name]).items()},
                      'map': meters[name].compute()['map']} for name in names}
    results['ours']['map_before_speedup'] = MAP_BEFORE_SPEEDUP if limit == 40 else None
    payload = {'frames': len(frames), 'grid': list(grid.shape), 'settle_s': settle, 'results': results,
               'speedup_median': results['dbscan']['ms_per_frame']['median'] / results['ours']['ms_per_frame'][
                   'median'],
               'speedup_cpu_median': results['dbscan']['cpu_ms_per_frame']['median'] /
               results['ours']['cpu_ms_per_frame']['median'],
               'loadavg_before': list(load_before), 'loadavg_after': list(os.getloadavg())}
    path = write_result('vectorize', payload)
    for name, r in results.items():
        print(f'{name:<7} {r["ms_per_frame"]["median"]:8.1f} ms/frame (p95 {r["ms_per_frame"]["p95"]:.1f}, CPU '
              f'{r["cpu_ms_per_frame"]["median"]:.1f})  mAP vs GT polylines {r["map"]:.4f}')
    if results['ours']['map_before_speedup'] is not None:
        print(f'ours before the speed-up: mAP {MAP_BEFORE_SPEEDUP:.4f}')
    print(f'{len(frames)} frames at {grid.H}x{grid.W}; ours is {payload["speedup_median"]:.0f}x faster (CPU time: '
          f'{payload["speedup_cpu_median"]:.0f}x), load average {payload["loadavg_after"][0]:.1f} -> {path}')
    return payload


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--limit', type=int, default=40, help='frames (half from each val scene)')
    p.add_argument('--settle', type=float, default=SETTLE,
                   help='seconds of rest before each timed call (0: back to back, as before 2026-12-01)')
    args = p.parse_args(argv)
    run(args.limit, args.settle)


if __name__ == '__main__':
    main()
