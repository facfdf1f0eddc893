"""Evaluation speed (a measurement, not a test; JSON in ``benchmarks/results/eval.json``):

* **vector AP**: ``APMeter.update`` per frame with the Chamfer matrix as computed now (one KD-tree query per
  ground-truth instance for all the predictions' points, one unclipped matrix for all thresholds) against the form
  before 2026-12-08 (one query per prediction / ground-truth pair and threshold, :func:`chamfer_reference`, kept here
  as the reference ``test/test_eval.py`` holds the new one to, bit for bit); both score the same polylines (our
  vectorizer's, from the ground-truth rasters of the synthetic val scenes made model-like, as ``bench_vectorize``)
  in alternation, and must give the same AP;
* **the encoder prefix cache**: ``evaluate`` of two CPU edge students with ImageNet's Lite0 (the later layers
  untrained, different seeds) on the same synthetic val frames: plain, with ``prefix_cache=True`` into an empty
  cache (the first model: computes and stores each frame's prefix), and with it filled (the second model: reads
  them), seconds per frame; the scores must equal the plain evaluation's.

    python -m benchmarks.bench_eval [--frames 40] [--threads 1]
"""
from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

import numpy as np

from benchmarks.harness import write_result


def chamfer_reference(pred, gt, threshold: float, bidirectional: bool) -> np.ndarray:
    """The (P, G) Chamfer matrix as computed until 2026-12-08: one KD-tree query per (prediction, ground truth)
    pair, clipped at ``threshold``, computed again for every threshold."""
    from scipy.spatial import cKDTree
    out = np.full((len(pred), len(gt)), float(threshold))
    gt_trees = [cKDTree(g) if len(g) else None for g in gt]
    pred_trees = [cKDTree(p) if len(p) else None for p in pred] if bidirectional else []
    for i, p in enumerate(pred):
        if not len(p):
            continue
        for j, g in enumerate(gt):
            if gt_trees[j] is None:
                continue
            d = gt_trees[j].query(p)[0].mean()
            if bidirectional:
                d = (d + pred_trees[i].query(g)[0].mean()) / 2
            out[i, j] = min(d, threshold)
    return out


def val_root(frames: int):
    """The synthetic val scenes (scene-0103, scene-0916), ``frames`` keyframes in all (as ``bench_vectorize``)."""
    from mapkd_core.data.synth import SynthConfig
    from mapkd_core.data.synth.cache import synthetic_dataroot
    return synthetic_dataroot(SynthConfig(scenes=('scene-0103', 'scene-0916'), limit=max(frames // 2, 1)),
                              progress=False)


def ap_rows(frames: int) -> dict:
    import mapkd_core.eval.ap as ap
    from benchmarks.bench_vectorize import outputs_from_raster
    from mapkd_core.config import GridConfig
    from mapkd_core.data.index import NuScenesIndex
    from mapkd_core.data.map_gt import MapGroundTruth
    from mapkd_core.eval.vectorize import vectorize

    root = val_root(frames)
    grid = GridConfig()
    gt_src = MapGroundTruth(root, grid)
    rng = np.random.default_rng(0)
    pairs = []
    for f in NuScenesIndex(root, 'v1.0-mini', 'mini_val'):
        gt = gt_src.vectors(f.city, f.ego_to_global)
        pairs.append((vectorize(*outputs_from_raster(gt_src.raster(f.city, f.ego_to_global), rng), grid), gt))
    ours = ap.chamfer_distances, ap.chamfer_matrix

    def reference(pred, gt, threshold, bidirectional, distances=None):
        return chamfer_reference(pred, gt, threshold, bidirectional)
    forms = {'ours': ours, 'reference': (lambda pred, gt, bidirectional: None, reference)}
    times = {name: [] for name in forms}
    meters = {name: ap.APMeter(grid) for name in forms}
    try:
        for i, (pred, gt) in enumerate(pairs):
            for name in (('ours', 'reference') if i % 2 == 0 else ('reference', 'ours')):
                ap.chamfer_distances, ap.chamfer_matrix = forms[name]
                t0 = time.perf_counter()
                meters[name].update(pred, gt)
                times[name].append(time.perf_counter() - t0)
    finally:
        ap.chamfer_distances, ap.chamfer_matrix = ours
    scores = {name: m.compute() for name, m in meters.items()}
    row = {'frames': len(pairs), 'grid': list(grid.shape),
           **{f'{name}_ms_per_frame': 1e3 * statistics.median(t) for name, t in times.items()},
           'same_ap': scores['ours']['ap'] == scores['reference']['ap'], 'map': scores['ours']['map']}
    row['speedup'] = row['reference_ms_per_frame'] / row['ours_ms_per_frame']
    print(f'vector AP: {row["reference_ms_per_frame"]:.1f} -> {row["ours_ms_per_frame"]:.1f} ms per frame '
          f'(x{row["speedup"]:.1f}; the same AP: {row["same_ap"]}; {len(pairs)} frames)', flush=True)
    return row


def prefix_rows(frames: int) -> dict:
    import warnings

    import torch

    from mapkd_core.config import load_config
    from mapkd_core.eval.evaluate import evaluate
    from mapkd_core.models import build_model
    from mapkd_core.paths import config_dir
    # the dataroot resolved before the cache root is switched below (it lives in the project's cache)
    data_cfg = load_config(config_dir() / 'data' / 'synthetic.yaml',
                           overrides={'dataset': {'dataroot': str(val_root(frames))}})
    models = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        with warnings.catch_warnings():
            warnings.simplefilter('ignore')
            models.append(build_model('student_edge_cpu'))
    previous = os.environ.get('MAPKD_CACHE')
    runs = {}
    with tempfile.TemporaryDirectory(prefix='mapkd-bench-eval-') as tmp:
        os.environ['MAPKD_CACHE'] = tmp  # an empty cache root: the first cached evaluation fills it
        try:
            for name, model, cached in (('plain', models[0], False), ('cached_cold', models[0], True),
                                        ('cached_warm', models[1], True), ('plain_second', models[1], False)):
                t0 = time.perf_counter()
                rep = evaluate(model, data_cfg, 'mini_val', batch_size=4, limit=frames, progress=False,
                               prefix_cache=cached)
                runs[name] = {'s_per_frame': (time.perf_counter() - t0) / rep['samples'], 'samples': rep['samples'],
                              'model_ms_per_sample': rep['timing']['model_ms_per_sample'], 'miou': rep['miou'],
                              'map': rep['map'], 'iou': rep['iou']}
        finally:
            if previous is None:
                os.environ.pop('MAPKD_CACHE', None)
            else:
                os.environ['MAPKD_CACHE'] = previous
    row = {'model': 'student_edge_cpu (ImageNet Lite0, the rest untrained)', 'split': 'mini_val (synthetic)',
           'runs': runs,
           'same_scores': (runs['cached_cold']['iou'] == runs['plain']['iou'] and
                           runs['cached_warm']['iou'] == runs['plain_second']['iou'] and
                           runs['cached_cold']['map'] == runs['plain']['map'] and
                           runs['cached_warm']['map'] == runs['plain_second']['map'])}
    plain = (runs['plain']['s_per_frame'] + runs['plain_second']['s_per_frame']) / 2
    row['speedup_warm'] = plain / runs['cached_warm']['s_per_frame']
    row['speedup_cold'] = plain / runs['cached_cold']['s_per_frame']
    print(f'evaluation, {runs["plain"]["samples"]} frames: plain {plain:.3f} s/frame, prefix cache filling '
          f'{runs["cached_cold"]["s_per_frame"]:.3f}, read {runs["cached_warm"]["s_per_frame"]:.3f} '
          f'(x{row["speedup_warm"]:.2f}; the same scores: {row["same_scores"]})', flush=True)
    return row


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--frames', type=int, default=40, help='frames of each measurement')
    p.add_argument('--threads', type=int, default=1)
    args = p.parse_args(argv)
    import torch
    torch.set_num_threads(args.threads)
    doc = {'threads': args.threads, 'ap': ap_rows(args.frames), 'prefix_cache': prefix_rows(args.frames)}
    print(f'wrote {write_result("eval", doc)}')
    return doc


if __name__ == '__main__':
    main()
