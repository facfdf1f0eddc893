"""benchmarks/bench_kernels: the replaced CPU kernels timed against PyTorch's (the numbers belong to the benchmark;
here: it runs, and writes what it measured)."""
import json

import pytest

from benchmarks import bench_kernels, harness


def test_bench_kernels_times_ours_and_pytorchs_depthwise_and_direction_loss(tmp_path, monkeypatch):
    monkeypatch.setattr(harness, 'RESULTS_DIR', tmp_path)
    monkeypatch.setattr(bench_kernels, 'DEPTHWISE_SHAPES', ((2, 16, 8, 22, 1), (2, 16, 8, 22, 2)))
    monkeypatch.setattr(bench_kernels, 'DIRECTION_GRID', (1, 37, 20, 40))
    bench_kernels.main(['--repeats', '2', '--stages', ''])
    doc = json.loads((tmp_path / 'kernels.json').read_text())
    assert [r['stride'] for r in doc['depthwise']] == [1, 2]
    for row in doc['depthwise']:
        assert row['ours_ms'] > 0 and row['torch_ms'] > 0
        assert row['speedup'] == pytest.approx(row['torch_ms'] / row['ours_ms'])
    assert doc['direction_loss']['ours_ms'] > 0 and doc['direction_loss']['whole_grid_ms'] > 0
    assert 0 < doc['direction_loss']['masked_fraction'] < 0.2
    assert doc['stages'] == [] and doc['machine']

