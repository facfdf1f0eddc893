"""The GPU check script runs cleanly on a machine without a GPU: one line, exit 0, a JSON that says so."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize('python', [sys.executable, None], ids=['venv-python', 'path-python'])
def test_gpu_check_without_gpu_says_so_and_exits_0(tmp_path, python):
    import torch
    if torch.cuda.is_available() or Path('/dev/nvidia0').exists():
        pytest.skip('this machine has a GPU: the check would measure it')
    env = {**os.environ, 'OUT': str(tmp_path)}
    env.pop('PYTHONPATH', None)
    if python:
        env['PYTHON'] = python
    else:
        env.pop('PYTHON', None)
    r = subprocess.run(['bash', str(REPO / 'benchmarks' / 'gpu_check.sh')], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    lines = [ln for ln in r.stdout.splitlines() if ln.strip()]
    assert len(lines) == 1 and 'no' in lines[0] and 'GPU' in lines[0], r.stdout
    doc = json.loads((tmp_path / 'gpu_check.json').read_text())
    assert doc['gpu'] is False and doc['benchmark'] == 'gpu_check'


def test_gpu_check_module_imports_without_installing():
    """mapkd_core and the check import from the checkout with PYTHONPATH alone (what the script sets)."""
    env = {**os.environ, 'PYTHONPATH': str(REPO)}
    r = subprocess.run([sys.executable, '-c', 'import benchmarks.gpu_check as g; print(g.missing_modules())'],
                       cwd='/', env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == '[]'


@pytest.mark.parametrize('stage', ['teacher', 'student'])
def test_gpu_check_training_step_runs_on_synthetic_batches(stage):
    """The training measurement's synthetic batch fits the models and losses (tiny configs, CPU, one step): what
    the GPU run does at paper size."""
    import torch

    from benchmarks.gpu_check import training
    torch.manual_seed(0)
    r = training(stage, torch, steps=1, warmup=0, device='cpu', suffix='_tiny')
    assert r['steps_per_s'] > 0 and r['batch_size'] == 4 and r['amp'] is False
    assert r['frozen'] == ([] if stage == 'teacher' else ['coach', 'teacher'])
    assert r['nuscenes_epoch_min'] == pytest.approx(28130 / r['samples_per_s'] / 60)
