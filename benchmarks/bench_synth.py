"""Synthetic dataset generation speed: samples/s of mapkd-synth (six 800x450 cameras + LiDAR per sample).

Two measurements: the end-to-end rate of ``generate`` with its worker pool (the default 2 processes) on a few
scenes, and the per-stage cost of one keyframe in one process (ground texture, six cameras, LiDAR, JPEG encoding).

    python -m benchmarks.bench_synth [--scenes scene-0061,scene-0103] [--limit 10] [--repeats 5]
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


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--scenes', default='scene-0061,scene-0103')
    p.add_argument('--limit', type=int, default=10)
    p.add_argument('--repeats', type=int, default=5)
    args = p.parse_args(argv)
    run(args.scenes, args.limit, args.repeats)


if __name__ == '__main__':
    main()
