"""benchmarks/bench_eval: the evaluation's speed-ups timed against the forms they replace (the numbers belong to
the benchmark; here: it runs, both sides score the same, and it writes what it measured)."""
import json

import pytest

from benchmarks import bench_eval, harness


def test_bench_eval_times_the_ap_and_the_prefix_cache_with_the_same_scores(tmp_path, monkeypatch):
    monkeypatch.setattr(harness, 'RESULTS_DIR', tmp_path)
    import os
    before = os.environ.get('MAPKD_CACHE')
    bench_eval.main(['--frames', '4'])
    assert os.environ.get('MAPKD_CACHE') == before  # the prefix rows' own empty cache root was temporary
    doc = json.loads((tmp_path / 'eval.json').read_text())
    ap = doc['ap']
    assert ap['frames'] == 4 and ap['same_ap'] and ap['map'] > 0.9  # perfect, model-like outputs
    assert ap['speedup'] == pytest.approx(ap['reference_ms_per_frame'] / ap['ours_ms_per_frame'])
    prefix = doc['prefix_cache']
    assert prefix['same_scores'] and set(prefix['runs']) == {'plain', 'cached_cold', 'cached_warm', 'plain_second'}
    assert all(r['samples'] == 4 and r['s_per_frame'] > 0 for r in prefix['runs'].values())
