"""bench_training's step breakdown: which submodules count as the frozen part of a model."""
from __future__ import annotations

from torch import nn

from benchmarks.bench_training import frozen_roots


def test_frozen_roots_are_the_largest_fully_frozen_submodules():
    model = nn.Sequential(nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU()),  # all frozen
                          nn.Sequential(nn.Conv2d(4, 4, 3), nn.Conv2d(4, 4, 3)),  # first frozen, second trained
                          nn.Conv2d(4, 2, 1))
    for name, p in model.named_parameters():
        if name.startswith(('0.', '1.0.')):
            p.requires_grad_(False)
    assert frozen_roots(model) == ['0', '1.0']  # not 0.0 / 0.1 (inside a frozen root), not the parameter-free ReLU
    for p in model.parameters():
        p.requires_grad_(False)
    assert frozen_roots(model) == []  # the whole model frozen: no submodule is a root below it


def test_set_needs_key_equals_value(capsys):
    import pytest

    from benchmarks.bench_training import main
    with pytest.raises(SystemExit):
        main(['--set', 'freeze_eval', '--stages', 'student_edge_cpu_baseline'])
    assert "--set 'freeze_eval': expected KEY=VALUE" in capsys.readouterr().err
