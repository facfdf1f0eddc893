"""Evaluation: IoU and AP on hand-built cases with hand-derived answers, and vectorization round trips."""
from pathlib import Path

import numpy as np
import pytest
import torch
from shapely.geometry import LineString, Point

from mapkd_core.config import GridConfig
from mapkd_core.constants import CLASS_NAMES
from mapkd_core.data.vectors import MapVector
from mapkd_core.eval.ap import (APConfig, APMeter, average_precision, chamfer_matrix, greedy_match, instance_pixels,
                                iou_matrix)
from mapkd_core.eval.iou import IoUMeter
from mapkd_core.eval.vectorize import VectorizeConfig, cluster_embeddings, skeleton_paths, vectorize

#: a small grid keeps the hand arithmetic readable: 0.15 m cells, x in [-6, 6] (80 columns), y in [-3, 3] (40 rows)
GRID = GridConfig(xbound=(-6.0, 6.0, 0.15), ybound=(-3.0, 3.0, 0.15))


def test_class_order_is_pinned_by_name_in_the_reports():
    meter = IoUMeter()
    meter.update(torch.zeros(1, 4, 2, 2), torch.nn.functional.one_hot(torch.zeros(1, 2, 2).long(), 4).permute(0, 3,
                                                                                                               1, 2))
    report = meter.compute()
    assert list(report['iou']) == ['background', 'divider', 'ped_crossing', 'boundary'] == list(CLASS_NAMES)
    ap = APMeter(GRID).compute()
    assert list(ap['ap']) == ['divider', 'ped_crossing', 'boundary']


# ---------------------------------------------------------------------------------------------------------------
# IoU


def onehot(labels):
    return torch.nn.functional.one_hot(torch.as_tensor(labels).long(), 4).permute(0, 3, 1, 2)


def test_iou_perfect_and_hand_computed():
    gt = np.zeros((1, 4, 6), int)
    gt[0, 1, :] = 1        # a divider row of 6 pixels
    gt[0, 3, 2:5] = 3      # a boundary of 3 pixels
    meter = IoUMeter()
    meter.update(onehot(gt).float() * 5, onehot(gt))
    r = meter.compute()
    assert r['iou']['divider'] == 1.0 and r['iou']['boundary'] == 1.0 and r['miou'] == 1.0
    assert r['iou']['ped_crossing'] is None and r['classes_in_miou'] == ['divider', 'boundary']
    # prediction: the divider shifted to row 2 for 4 of its 6 pixels, and one boundary pixel missed
    pred = gt.copy()
    pred[0, 1, 2:] = 0
    pred[0, 2, 2:] = 1
    pred[0, 3, 4] = 0
    meter = IoUMeter()
    meter.update(onehot(pred).float(), onehot(gt))
    r = meter.compute()
    # divider: GT 6 px, prediction 2 + 4 = 6 px, overlap 2 -> IoU = 2 / (6 + 6 - 2) = 0.2
    assert r['iou']['divider'] == pytest.approx(0.2)
    # boundary: GT 3 px, prediction 2 px inside it -> 2 / 3
    assert r['iou']['boundary'] == pytest.approx(2 / 3)
    # ped_crossing: none anywhere -> undefined; mIoU is the mean of the two defined classes
    assert r['miou'] == pytest.approx((0.2 + 2 / 3) / 2)


def test_iou_is_pooled_over_the_split_not_averaged_per_sample():
    gt = np.zeros((1, 2, 10), int)
    gt[0, 0, :] = 1
    small = np.zeros((1, 2, 10), int)
    small[0, 0, :2] = 1
    meter = IoUMeter()
    meter.update(onehot(gt).float(), onehot(gt))         # sample 1: 10 / 10
    meter.update(onehot(small).float(), onehot(small))   # sample 2: 2 / 2
    empty_pred = np.zeros((1, 2, 10), int)
    meter.update(onehot(empty_pred).float(), onehot(gt))  # sample 3: 0 / 10
    # pooled: (10 + 2 + 0) / (10 + 2 + 10) = 12 / 22, not the mean of the per-sample IoUs (1 + 1 + 0) / 3
    assert meter.compute()['iou']['divider'] == pytest.approx(12 / 22)


# ---------------------------------------------------------------------------------------------------------------
# AP: hand-built instance masks


def band(rows, cols):
    m = np.zeros(GRID.shape, np.int32)
    m[rows[0]:rows[1], cols[0]:cols[1]] = 1
    return m


def test_chamfer_and_iou_gate_by_hand():
    """GT: a horizontal 5 px band, rows 18..22, columns 10..69. Predictions: the same band shifted down by k rows."""
    gt = band((18, 23), (10, 70))
    g = instance_pixels(gt, 1, GRID)
    for k, cd_expected, iou_expected in (
            # k = 3: prediction rows 21..25; rows 21, 22 are on the GT (distance 0), rows 23, 24, 25 are 1, 2, 3 rows
            # (0.15, 0.30, 0.45 m) from the GT's last row: CD = (0 + 0 + 0.15 + 0.30 + 0.45) / 5 = 0.18 m;
            # IoU = 2 shared rows / 8 rows = 0.25
            (3, 0.18, 0.25),
            # k = 5 (0.75 m): rows 23..27, all off the GT: CD = (0.15 + 0.30 + 0.45 + 0.60 + 0.75) / 5 = 0.45 m;
            # no shared pixel: IoU = 0, so the 0.1 gate rejects it although CD < 0.5
            (5, 0.45, 0.0)):
        pred = band((18 + k, 23 + k), (10, 70))
        p = instance_pixels(pred, 1, GRID)
        assert chamfer_matrix(p, g, 1.5, False)[0, 0] == pytest.approx(cd_expected)
        assert iou_matrix(pred, 1, gt, 1)[0, 0] == pytest.approx(iou_expected)
    # clipping: a band 2 m away has a Chamfer distance clipped at the threshold
    far = instance_pixels(band((18, 23), (10, 70)) * 0 + band((0, 5), (10, 70)), 1, GRID)
    assert chamfer_matrix(far, g, 0.5, False)[0, 0] == 0.5


@pytest.mark.parametrize('bidirectional', [False, True])
def test_chamfer_matrix_equals_the_pairwise_queries_bit_for_bit(bidirectional):
    """Instances of 0 to 300 points (empty ones included) on either side: the batched queries give exactly the
    pairwise ones (the form before 2026-12-08, ``benchmarks.bench_eval.chamfer_reference``) at every threshold, from
    one unclipped matrix."""
    from benchmarks.bench_eval import chamfer_reference
    from mapkd_core.eval.ap import chamfer_distances
    rng = np.random.default_rng(3)
    for trial in range(20):
        def instances(n):
            return [rng.normal(rng.uniform(-20, 20, 2), rng.uniform(0.2, 5), (int(k), 2))
                    for k in rng.choice([0, 1, 7, 60, 300], n)]
        pred, gt = instances(rng.integers(0, 7)), instances(rng.integers(0, 7))
        distances = chamfer_distances(pred, gt, bidirectional)
        for t in (0.5, 1.0, 1.5, 100.0):
            ref = chamfer_reference(pred, gt, t, bidirectional)
            assert np.array_equal(chamfer_matrix(pred, gt, t, bidirectional), ref), (trial, t)
            assert np.array_equal(chamfer_matrix(pred, gt, t, bidirectional, distances), ref), (trial, t)


def test_match_at_loose_not_strict_threshold():
    """The 3-row shift (CD 0.18 m, IoU 0.25) with thresholds 0.1 / 0.2 / 0.3 m: no match at 0.1, a match at 0.2
    and 0.3; one GT, one prediction -> AP = [0, 1, 1]."""
    gt = band((18, 23), (10, 70))
    pred = band((21, 26), (10, 70))
    p, g = instance_pixels(pred, 1, GRID), instance_pixels(gt, 1, GRID)
    iou = iou_matrix(pred, 1, gt, 1)
    aps = []
    for t in (0.1, 0.2, 0.3):
        match = greedy_match(chamfer_matrix(p, g, t, False), iou, t, 0.1)
        aps.append(average_precision(np.array([0.9]), match >= 0, 1))
    assert aps == [0.0, 1.0, 1.0]
    # the 5-row shift (CD 0.45 < 0.5 but IoU 0) never passes the gate with P-MapNet's protocol ...
    far = band((23, 28), (10, 70))
    pf = instance_pixels(far, 1, GRID)
    gate = greedy_match(chamfer_matrix(pf, g, 0.5, False), iou_matrix(far, 1, gt, 1), 0.5, 0.1)
    assert gate.tolist() == [-1]
    # ... and matches with HDMapNet's variant (bidirectional CD: both directed means are 0.45 m; no gate)
    hd = APConfig.hdmapnet()
    cd = chamfer_matrix(pf, g, 0.5, hd.bidirectional)
    assert cd[0, 0] == pytest.approx(0.45)
    assert greedy_match(cd, iou_matrix(far, 1, gt, 1), 0.5, hd.iou_gate).tolist() == [0]


def test_average_precision_arithmetic():
    # perfect: one TP -> precision 1 at every recall -> 1.0
    assert average_precision(np.array([0.9]), np.array([True]), 1) == 1.0
    # empty prediction with one GT -> 0
    assert average_precision(np.array([]), np.array([], bool), 1) == 0.0
    # a false positive scored above the true positive: ranked FP (P 0/1, R 0), TP (P 1/2, R 1); monotone precision
    # at recall >= r for every r in 0.1 .. 1.0 is 1/2 -> AP = 0.5: the extra FP costs exactly 0.5
    assert average_precision(np.array([0.5, 0.9]), np.array([True, False]), 1) == pytest.approx(0.5)
    # the same FP scored below the TP costs nothing: TP first (P 1, R 1)
    assert average_precision(np.array([0.9, 0.5]), np.array([True, False]), 1) == pytest.approx(1.0)
    # two GTs, ranking TP, FP, TP: (P 1, R .5), (P .5, R .5), (P 2/3, R 1); monotone: 1, 2/3, 2/3;
    # recalls 0.1..0.5 take precision 1 (5 of them), 0.6..1.0 take 2/3 (5 of them): AP = (5 + 5 * 2/3) / 10
    assert average_precision(np.array([0.9, 0.8, 0.7]), np.array([True, False, True]), 2) == pytest.approx(
        (5 + 5 * 2 / 3) / 10)


def test_ap_meter_on_polylines():
    gt = [MapVector(1, [[-4.0, 0.0], [4.0, 0.0]]), MapVector(3, [[-4.0, 2.0], [4.0, 2.0]])]
    m = APMeter(GRID)
    m.update(gt, gt)
    r = m.compute()
    assert r['map'] == 1.0 and r['ap']['ped_crossing'] is None and r['frames_per_class']['divider'] == 1
    # an empty prediction gives 0
    m = APMeter(GRID)
    m.update([], gt)
    assert m.compute()['map'] == 0.0
    # an extra divider false positive scored above the true one: divider AP 0.5 at each threshold, boundary 1
    # -> mAP = (3 * 0.5 + 3 * 1.0) / 6 = 0.75
    m = APMeter(GRID)
    m.update([MapVector(1, [[-4.0, 0.0], [4.0, 0.0]], 0.5), MapVector(1, [[-4.0, -2.5], [4.0, -2.5]], 0.9),
              MapVector(3, [[-4.0, 2.0], [4.0, 2.0]], 0.8)], gt)
    r = m.compute()
    assert r['ap']['divider'] == {'0.5': 0.5, '1': 0.5, '1.5': 0.5}
    assert r['map'] == pytest.approx(0.75)
    # frames without the class are not averaged in: a second frame with only a boundary leaves divider AP at 0.5
    m.update([MapVector(3, [[-4.0, 2.0], [4.0, 2.0]])], [MapVector(3, [[-4.0, 2.0], [4.0, 2.0]])])
    assert m.compute()['ap']['divider']['0.5'] == 0.5 and m.compute()['frames_per_class']['divider'] == 1


# ---------------------------------------------------------------------------------------------------------------
# vectorization


def test_skeleton_of_a_thick_line_and_a_ring():
    line = np.zeros((20, 60), bool)
    line[8:13, 5:55] = True
    paths, _ = skeleton_paths(line, 10)
    assert len(paths) == 1 and abs(len(paths[0]) - 50) <= 6 and np.abs(paths[0][:, 0] - 10).max() <= 1
    ring = np.zeros((40, 40), np.uint8)
    import cv2
    cv2.circle(ring, (20, 20), 12, 1, 3)
    paths, _ = skeleton_paths(ring.astype(bool), 10)
    assert len(paths) == 1 and len(paths[0]) > 60  # the whole ring in one path (2 pi 12 ~ 75 px)


def test_cluster_embeddings_separates_instances():
    rng = np.random.default_rng(0)
    a = rng.normal(0, 0.2, (30, 16))
    b = rng.normal(0, 0.2, (40, 16)) + 3.0
    labels = cluster_embeddings(np.vstack([a, b]), 1.5)
    assert labels.max() == 1 and len(set(labels[:30])) == 1 and len(set(labels[30:])) == 1
    assert labels[0] != labels[30]


def gt_outputs(raster, seed=0):
    """Model-like outputs made from a ground-truth raster: one-hot logits, a random embedding per instance (far
    apart), the forward direction bins as one-hot logits."""
    rng = np.random.default_rng(seed)
    ids = raster.instance
    table = rng.normal(size=(ids.max() + 1, 16)) * 5.0
    table[0] = 0
    return (raster.semantic.astype(np.float32) * 10, table[ids].transpose(2, 0, 1),
            np.eye(37, dtype=np.float32)[raster.direction[0]].transpose(2, 0, 1))


def check_round_trip(vectors, raster, grid, min_pixels=20):
    """Vectorize the rasterised GT: as many polylines per class as instances visible in the raster, each within
    0.3 m (one-directional Chamfer, prediction -> its GT polyline) of a distinct GT polyline."""
    out = vectorize(*gt_outputs(raster), grid)
    ids, counts = np.unique(raster.instance, return_counts=True)
    visible = {int(i) for i, n in zip(ids, counts) if i > 0 and n >= min_pixels}
    for c in range(1, 4):
        gt_c = [(k + 1, v) for k, v in enumerate(vectors) if v.cls == c and (k + 1) in visible]
        pred_c = [v for v in out if v.cls == c]
        assert len(pred_c) == len(gt_c), (CLASS_NAMES[c], len(pred_c), len(gt_c))
        used = set()
        for v in pred_c:
            dense = LineString(v.points).segmentize(0.15)
            d = {i: np.mean([g.distance(Point(p)) for p in dense.coords])
                 for i, g in ((i, LineString(gv.points)) for i, gv in gt_c)}
            best = min(d, key=d.get)
            assert d[best] < 0.3, (CLASS_NAMES[c], d[best])
            assert best not in used
            used.add(best)
    return out


def test_vectorize_the_real_keyframe_ground_truth(keyframe, bundled_cfg):
    from mapkd_core.data.map_gt import MapGroundTruth
    gt = MapGroundTruth(keyframe.cameras[0].path.parents[2], bundled_cfg.grid, bundled_cfg.map_gt)
    vectors = gt.vectors(keyframe.city, keyframe.ego_to_global)
    out = check_round_trip(vectors, gt.raster(keyframe.city, keyframe.ego_to_global), bundled_cfg.grid)
    assert len(out) == 8  # 4 dividers and 4 boundaries on the real keyframe


def test_vectorize_synthetic_samples_ground_truth():
    from mapkd_core.data.index import NuScenesIndex
    from mapkd_core.data.map_gt import MapGroundTruth
    from mapkd_core.data.synth import SynthConfig
    from mapkd_core.data.synth.cache import synthetic_dataroot
    root = synthetic_dataroot(SynthConfig(scenes=('scene-0061', 'scene-0103', 'scene-0916'), limit=3), progress=False)
    grid = GridConfig()
    gt = MapGroundTruth(root, grid)
    frames = NuScenesIndex(root, 'v1.0-mini', 'mini_val')
    total = 0
    for f in frames:
        vectors = gt.vectors(f.city, f.ego_to_global)
        total += len(check_round_trip(vectors, gt.raster(f.city, f.ego_to_global), grid))
    assert total > 20


def test_vectorize_without_embedding_and_with_noise():
    """No embedding head: connected pieces become instances; small noise blobs are dropped."""
    sem = np.zeros((4, *GRID.shape), np.float32)
    sem[0] = 1.0
    sem[1, 10:15, 5:70] = 5.0  # a divider band
    sem[1, 30, 30] = 5.0       # one stray pixel
    out = vectorize(sem, None, None, GRID, VectorizeConfig())
    assert len(out) == 1 and out[0].cls == 1
    xs = out[0].points[:, 0]
    assert xs.min() < -4.5 and xs.max() > 4.0  # spans the band's columns 5..69 -> x from -5.2 to 4.4 m
    assert 0.5 < out[0].score <= 1.0


def test_mapkd_eval_command_writes_report_table_and_pictures(tmp_path):
    import json
    import subprocess
    import sys
    import warnings

    from mapkd_core.data.synth import SynthConfig
    from mapkd_core.data.synth.cache import synthetic_dataroot
    from mapkd_core.models import build_model, save_weights
    root = synthetic_dataroot(SynthConfig(scenes=('scene-0061', 'scene-0103', 'scene-0916'), limit=3), progress=False)
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        weights = save_weights(build_model('student_edge_tiny'), tmp_path / 'edge.safetensors')
    r = subprocess.run([sys.executable, '-m', 'mapkd_core.eval.cli', '--weights', str(weights), '--dataroot', str(root),
                        '--split', 'mini_val', '--out', str(tmp_path / 'eval'), '--pictures', '2', '--quiet',
                        '--by-scene'],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert 'mIoU' in r.stdout and 'mAP' in r.stdout and 'frames/s' in r.stdout
    report = json.loads((tmp_path / 'eval' / 'report.json').read_text())
    assert report['samples'] == 6 and report['model'] == 'student_edge'
    assert list(report['iou']) == list(CLASS_NAMES) and list(report['ap']) == ['divider', 'ped_crossing', 'boundary']
    assert report['thresholds'] == [0.5, 1.0, 1.5] and report['iou_gate'] == 0.1
    assert report['timing']['vectorize_ms_per_sample'] > 0
    assert len(report['pictures']) == 2 and all(Path(p).is_file() for p in report['pictures'])
    # per scene: mini_val's two scenes, three frames each, whose pixel counts add up to the pooled ones
    scenes = report['scenes']
    assert sorted(scenes) == ['scene-0103', 'scene-0916'] and [s['samples'] for s in scenes.values()] == [3, 3]
    for key in ('intersection', 'union'):
        for c in CLASS_NAMES:
            assert sum(s[key][c] for s in scenes.values()) == report[key][c]
    assert all(s['map'] is None or 0 <= s['map'] <= 1 for s in scenes.values())
    assert 'per scene' in r.stdout and 'scene-0916' in r.stdout
    # a missing weights file is a clear error, not a traceback
    r = subprocess.run([sys.executable, '-m', 'mapkd_core.eval.cli', '--weights', str(tmp_path / 'nope.safetensors'),
                        '--dataroot', str(root)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and 'weights file not found' in r.stderr


def test_polyline_evaluator_scores_vectors_against_vectors():
    from mapkd_core.config import MapGtConfig
    from mapkd_core.eval.polylines import PolylineEvaluator
    grid = GridConfig(xbound=(-6.0, 6.0, 0.15), ybound=(-3.0, 3.0, 0.15))
    gt = [MapVector(1, [[-5.0, 1.0], [5.0, 1.0]]), MapVector(3, [[-5.0, -2.0], [5.0, -2.0]])]
    perfect = PolylineEvaluator(grid, MapGtConfig(line_width=3))
    perfect.update(gt, gt)
    rep = perfect.compute()
    assert rep['frames'] == 1 and rep['miou'] == pytest.approx(1.0) and rep['map'] == pytest.approx(1.0)
    assert rep['iou']['ped_crossing'] is None  # absent on both sides: left out of the mean
    # the divider predicted 1.5 m (10 rows) off: no overlap with a 3 px line; the boundary is still perfect
    shifted = PolylineEvaluator(grid, MapGtConfig(line_width=3))
    shifted.update([MapVector(1, [[-5.0, 2.5], [5.0, 2.5]], 0.9), gt[1]], gt)
    rep = shifted.compute()
    assert rep['iou']['divider'] == 0.0 and rep['iou']['boundary'] == pytest.approx(1.0)
    assert rep['miou'] == pytest.approx(0.5)
    assert rep['ap']['divider']['0.5'] == 0.0 and rep['ap']['divider']['1'] == 0.0  # no mask overlap: IoU gate
    empty = PolylineEvaluator(grid, MapGtConfig(line_width=3))
    empty.update([], gt)
    assert empty.compute()['miou'] == 0.0 and empty.compute()['map'] == 0.0
