"""Synthetic dataset generation speed: samples/s of mapkd-synth (six 800x450 cameras + LiDAR per sample).

Two measurements: the end-to-end rate of ``generate`` with its worker pool (the default 2 processes) on a few
scenes, and the per-stage cost of one keyframe in one process (ground texture, six cameras, LiDAR, JPEG encoding).

    python -m benchmarks.bench_synth [--scenes scene-0061,scene-0103] [--limit 10] [--repeats 5]

``--drives`` instead generates the whole default virtual-drives dataset (``dataroot: synthetic_drives``: the ten
real-track scenes plus >= 6,000 geo_train and >= 1,000 geo_val keyframes at 704x396) into the cache folder that
``synthetic_drives`` resolves to (so training can use it afterwards), resuming an interrupted run, and records the
wall time, keyframes/s, the disk size and the plan's summary (coverage shares, train-val distance)::

    nohup python -m benchmarks.bench_synth --drives > drives.log 2>&1 &
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

from benchmarks.harness import time_runs, write_result


def run(scenes: str = 'scene-0061,scene-0103', limit: int = 10, repeats: int = 5) -> dict:
    from mapkd_core.data.synth.generate import SceneRenderer, SynthConfig, generate, keyframe_times
    from mapkd_core.data.synth.style import Style, colour_texture, wear_markings
    from mapkd_core.data.synth.generate import ego_pose_2d
    from mapkd_core.paths import bundled_dataroot

    names = tuple(s for s in scenes.split(',') if s)
    cfg = SynthConfig(scenes=names, limit=limit)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        generate(Path(tmp) / 'synth', cfg, progress=False)
        total = time.perf_counter() - t0
    n = limit * len(names)

    r = SceneRenderer(cfg, bundled_dataroot())
    scene = r.tracks[names[-1]]
    t_key = keyframe_times(scene, 0)[1]
    world = r.world(scene.city)
    pose = ego_pose_2d(scene, t_key)
    rng = np.random.default_rng(0)
    style = Style.sample(rng, scene.city)
    stages = {
        'ground_classes': lambda: world.ground(pose, cfg.render_range, cfg.texture_resolution),
    }
    ground = world.ground(pose, cfg.render_range, cfg.texture_resolution)
    stages['style_texture'] = lambda: colour_texture(wear_markings(ground.classes, style.wear, rng), style, rng)
    tex = colour_texture(ground.classes, style, rng)
    boxes = r.boxes(scene, t_key, pose)
    stages['six_cameras'] = lambda: [r.cameras[ch].render(ground, tex, np.eye(3), boxes, style.sky, style.haze,
                                                          cfg.fog_start) for ch in r.cameras]
    img = r.cameras['CAM_FRONT'].render(ground, tex, np.eye(3), boxes, style.sky, style.haze, cfg.fog_start)[0]
    img = np.clip(img, 0, 255).astype(np.uint8)
    stages['six_jpeg_encodes'] = lambda: [cv2.imencode('.jpg', img, [cv2.IMWRITE_JPEG_QUALITY, 90]) for _ in range(6)]
    stages['lidar'] = lambda: r.lidar.scan(ground, np.eye(3), boxes, rng)
    stage_times = {k: time_runs(fn, warmup=1, repeats=repeats) for k, fn in stages.items()}
    payload = {'scenes': list(names), 'samples': n, 'seconds_total': total, 'samples_per_s': n / total,
               'workers': 'min(2, cpus)', 'image_size': [cfg.height, cfg.width], 'stage_seconds_one_process':
               stage_times}
    path = write_result('synth', payload)
    print(f'synth: {n / total:.2f} samples/s end to end ({n} samples in {total:.1f} s, incl. worker start-up); '
          'one keyframe in one process: ' +
          ', '.join(f'{k} {v["median"] * 1e3:.0f} ms' for k, v in stage_times.items()) + f' -> {path}')
    return payload


def run_drives() -> dict:
    import gzip
    import json
    import os

    from mapkd_core.data.synth.cache import DRIVES, cache_key
    from mapkd_core.data.synth.generate import generate
    from mapkd_core.paths import cache_root

    out = cache_root() / f'synth-{cache_key(DRIVES)}'
    if (out / 'synth.json').is_file():
        raise SystemExit(f'{out} is complete already: remove it to measure a generation from scratch')
    resumed = (out.with_name(out.name + '.partial') / 'records').is_dir()
    t0 = time.perf_counter()
    generate(out, DRIVES, progress=True, overwrite=True)
    seconds = time.perf_counter() - t0
    with gzip.open(out / 'drives.json.gz', 'rt', encoding='utf-8') as fh:
        summary = json.load(fh)['summary']
    keyframes = len(list((out / 'samples' / 'LIDAR_TOP').iterdir()))
    size = sum(p.stat().st_size for p in out.rglob('*') if p.is_file())
    lidar = sum(p.stat().st_size for p in (out / 'samples' / 'LIDAR_TOP').iterdir())
    payload = {'dataroot': out.name, 'keyframes': keyframes, 'seconds_total': seconds,
               'keyframes_per_s': keyframes / seconds, 'resumed_run': resumed, 'workers': 'min(2, cpus)',
               'cpus': os.cpu_count(), 'image_size': [DRIVES.height, DRIVES.width], 'disk_bytes': size,
               'disk_bytes_lidar': lidar, 'plan': summary}
    path = write_result('synth_drives', payload)
    print(f'synth drives: {keyframes} keyframes in {seconds / 60:.1f} min ({keyframes / seconds:.2f} keyframes/s), '
          f'{size / 1e9:.2f} GB on disk ({lidar / 1e9:.2f} GB LiDAR) -> {path}')
    return payload


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--scenes', default='scene-0061,scene-0103')
    p.add_argument('--limit', type=int, default=10)
    p.add_argument('--repeats', type=int, default=5)
    p.add_argument('--drives', action='store_true', help='generate the default virtual-drives dataset (see above)')
    args = p.parse_args(argv)
    if args.drives:
        run_drives()
    else:
        run(args.scenes, args.limit, args.repeats)


if __name__ == '__main__':
    main()
