"""benchmarks/bench_map_gap.py: each real model runs once per frame, and a mix takes the semantic head from one
source and the embedding and direction heads from the other (the GT one as confident logits)."""
import torch

from benchmarks.bench_map_gap import MIXES, HeadStore, mix_model
from mapkd_core.models.networks import MapOutput


class Fake:
    def __init__(self, value):
        self.value, self.calls = value, 0

    def forward_batch(self, batch):
        self.calls += 1
        b = len(batch['token'])
        return MapOutput(semantic=torch.full((b, 4, 2, 3), self.value), embedding=torch.full((b, 2, 2, 3), self.value),
                         direction=torch.full((b, 5, 2, 3), self.value), bev=None)


def test_mixes_take_each_head_from_its_source_and_run_each_model_once_per_frame():
    models = {'S': Fake(1.0), 'T': Fake(2.0)}
    store = HeadStore(models)
    gt = torch.zeros(2, 4, 2, 3)
    gt[:, 0] = 1.0
    batch = {'token': ['a', 'b'], 'semantic': gt}
    for sem, inst in MIXES:
        out = mix_model(store, sem, inst, cfg=None).forward_batch(batch)
        expect_sem = (gt * 2 - 1) * 10 if sem == 'GT' else torch.full((2, 4, 2, 3), models[sem].value)
        assert torch.equal(out.semantic, expect_sem), (sem, inst)
        assert torch.equal(out.embedding, torch.full((2, 2, 2, 3), models[inst].value)), (sem, inst)
        assert torch.equal(out.direction, torch.full((2, 5, 2, 3), models[inst].value)), (sem, inst)
    assert models['S'].calls == 1 and models['T'].calls == 1  # the heads are kept per token
    mix_model(store, 'S', 'T', cfg=None).forward_batch({'token': ['a', 'c'], 'semantic': gt})
    assert models['S'].calls == 2 and models['T'].calls == 2  # a new token runs both again
