"""``mapkd-inspect-data``: run the data layer on a dataroot and print what it found (and draw it).

For each sample of the split: cameras and image sizes, LiDAR points after sweep merging and filtering, map ground
truth elements and raster pixels per class, SD-prior road coverage; and a picture per sample with the six cameras
(LiDAR points projected on them) beside the BEV ground truth over the SD prior. Default: the bundled real keyframe.

It shows data, never model output (``mapkd-demo`` runs the whole loop with a model: node, bag replay, scores).
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import cv2
import numpy as np

from ..cli import add_debug_flag, command
from ..config import DataConfig, load_config
from ..constants import CLASS_NAMES
from ..errors import SplitError, UsageError
from ..eval.pictures import raster_picture
from ..geometry import project_points
from ..paths import config_path


def camera_mosaic(frame, lidar: np.ndarray | None, tile_w: int = 400) -> np.ndarray:
    """The six cameras at ``tile_w`` px wide, LiDAR points (coloured by depth) blended over them, 3 per row."""
    from ..data.images import load_camera

    tiles = []
    for cam in frame.cameras:
        original = (cam.height, cam.width) if cam.height and cam.width else None
        aspect = (cam.height / cam.width) if original else 9 / 16
        hw = (int(round(tile_w * aspect)), tile_w)
        img, k = load_camera(cam.path, cam.intrinsic, original, hw)
        tile = cv2.cvtColor(img, cv2.COLOR_RGB2BGR)
        if lidar is not None and len(lidar):
            overlay = tile.copy()
            uv, depth = project_points(lidar[::2, :3], k, cam.cam_to_ego)
            ok = (depth > 1) & (uv[:, 0] >= 0) & (uv[:, 0] < hw[1]) & (uv[:, 1] >= 0) & (uv[:, 1] < hw[0])
            colours = cv2.applyColorMap(np.clip(depth[ok] * 5, 0, 255).astype(np.uint8)[:, None],
                                        cv2.COLORMAP_JET)[:, 0]
            for (u, v), col in zip(uv[ok].astype(int), colours):
                cv2.circle(overlay, (int(u), int(v)), 1, col.tolist(), -1)
            tile = cv2.addWeighted(overlay, 0.6, tile, 0.4, 0)
        cv2.putText(tile, cam.channel, (6, 18), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (255, 255, 255), 1, cv2.LINE_AA)
        tiles.append(tile)
    rows = [np.hstack(tiles[i:i + 3]) for i in range(0, len(tiles), 3)]
    width = max(r.shape[1] for r in rows)
    rows = [np.pad(r, ((0, 0), (0, width - r.shape[1]), (0, 0))) for r in rows]
    return np.vstack(rows)


def pick_frames(ds, kinds: list[str]) -> list[int]:
    """Indices of frames whose patch holds each of ``kinds`` (crossing / intersection / curve), one per kind, from
    the ``drives.json.gz`` table of a synthetic-drives dataroot (the first keyframe that has that kind only, if
    there is one, else the first that has it)."""
    import gzip
    import json

    table = Path(ds.dataroot) / 'drives.json.gz'
    if not table.is_file():
        raise UsageError(f'--pick needs a dataroot with virtual drives (mapkd-synth --drives): no {table}')
    with gzip.open(table, 'rt', encoding='utf-8') as fh:
        rows = {(r['scene'], r['k']): r for r in json.load(fh)['keyframes']}
    position = {}  # frame index -> (scene, k) with k the keyframe's rank in its scene
    seen: dict[str, int] = {}
    for i, f in enumerate(ds.frames):
        position[i] = (f.scene_name, seen.get(f.scene_name, 0))
        seen[f.scene_name] = seen.get(f.scene_name, 0) + 1
    kinds_all = ('crossing', 'intersection', 'curve')
    out = []
    for kind in kinds:
        if kind not in kinds_all:
            raise UsageError(f'--pick: unknown kind {kind!r}; use {", ".join(kinds_all)}')
        has = [i for i in position if position[i] in rows and rows[position[i]][kind]]
        only = [i for i in has if not any(rows[position[i]][k] for k in kinds_all if k != kind)]
        if not has:
            raise SplitError(f'--pick: no keyframe of this split has a {kind} in its patch')
        out.append((only or has)[len(only or has) // 2])
    return out


def inspect(cfg: DataConfig, split: str | None, out_dir: Path | None, limit: int, pick: list[str] = ()) -> int:
    from ..data.dataset import MapDataset
    from ..data.lidar import load_lidar

    t0 = time.perf_counter()
    ds = MapDataset(cfg, split=split)
    print(f'dataroot  {ds.dataroot}')
    print(f'version   {cfg.dataset.version}   split {split or cfg.dataset.split}')
    scenes = sorted({f.scene_name for f in ds.frames})
    print(f'found     {len(ds)} keyframe(s) in {len(scenes)} scene(s): {", ".join(scenes[:8])}'
          f'{" ..." if len(scenes) > 8 else ""}   (index built in {time.perf_counter() - t0:.1f} s)')
    print(f'grid      {cfg.grid.H} x {cfg.grid.W} cells (x {cfg.grid.xbound}, y {cfg.grid.ybound})   '
          f'images {cfg.image.height} x {cfg.image.width}')
    if out_dir:
        out_dir.mkdir(parents=True, exist_ok=True)
    chosen = pick_frames(ds, list(pick)) if pick else list(range(min(limit, len(ds))))
    for rank, i in enumerate(chosen):
        frame = ds.frames[i]
        t = time.perf_counter()
        item = ds[i]
        dt = time.perf_counter() - t
        print(f'\nsample    {frame.token}  scene {frame.scene_name}  city {frame.city}  '
              f't={frame.timestamp}  ({dt * 1e3:.0f} ms to load)')
        x, y = frame.ego_to_global[:2, 3]
        print(f'ego pose  x={x:.1f} m  y={y:.1f} m  yaw={np.degrees(np.arctan2(frame.ego_to_global[1, 0], frame.ego_to_global[0, 0])):.1f} deg')
        for cam in frame.cameras:
            print(f'  {cam.channel:<16} {cam.width}x{cam.height}  f={cam.intrinsic[0, 0]:.0f} px  '
                  f'at ({cam.cam_to_ego[0, 3]:+.2f}, {cam.cam_to_ego[1, 3]:+.2f}, {cam.cam_to_ego[2, 3]:+.2f}) m')
        lidar = None
        if cfg.dataset.load_lidar:
            lidar = load_lidar(frame, cfg.dataset.lidar_min_distance, cfg.dataset.lidar_sweeps)
            print(f'  LiDAR   {len(frame.lidar)} sweep(s), {len(lidar)} points after removing those within '
                  f'{cfg.dataset.lidar_min_distance} m ({int(item["lidar_mask"].sum())} kept of '
                  f'{cfg.dataset.max_lidar_points} slots)')
        if 'semantic' in item:
            vecs = ds._map_gt.vectors(frame.city, frame.ego_to_global)
            sem = item['semantic'].numpy()
            for c in range(1, len(CLASS_NAMES)):
                n = sum(v.cls == c for v in vecs)
                length = sum(v.length for v in vecs if v.cls == c)
                print(f'  map GT  {CLASS_NAMES[c]:<13} {n:3d} polylines, {length:6.1f} m, {int(sem[c].sum()):6d} px')
        sd = None
        if 'sd_prior' in item:
            sd = item['sd_prior'].numpy()
            print(f'  SD map  OSM roads cover {100.0 * float((sd > 0).mean()):.1f} % of the grid')
        if out_dir:
            mosaic = camera_mosaic(frame, lidar)
            bev = raster_picture(item['semantic'].numpy(), cfg.grid, sd) if 'semantic' in item else None
            if bev is not None:
                bev = cv2.resize(bev, (mosaic.shape[1], int(bev.shape[0] * mosaic.shape[1] / bev.shape[1])),
                                 interpolation=cv2.INTER_NEAREST)
                mosaic = np.vstack([mosaic, bev])
            label = f'{pick[rank]}_' if pick else ''
            path = out_dir / f'{i:03d}_{label}{frame.token}.png'
            cv2.imwrite(str(path), mosaic)
            print(f'  picture {path}')
    return 0


@command('mapkd-inspect-data')
def main(argv=None) -> int:
    os.environ.setdefault('ROS_AUTOMATIC_DISCOVERY_RANGE', 'LOCALHOST')
    p = argparse.ArgumentParser(prog='mapkd-inspect-data', description=__doc__.split('\n')[0])
    p.add_argument('--config', default=None, help='data config YAML (default: config/data/bundled.yaml)')
    p.add_argument('--dataroot', default=None, help='override dataset.dataroot')
    p.add_argument('--version', default=None, help='override dataset.version')
    p.add_argument('--split', default=None, help='override dataset.split')
    p.add_argument('--limit', type=int, default=3, help='samples to print and draw (default 3)')
    p.add_argument('--out', default='outputs/inspect', help='folder for pictures ("" for none)')
    p.add_argument('--pick', default='', help='with a synthetic-drives dataroot: comma-separated kinds '
                   '(crossing, intersection, curve); draws one keyframe with each in its patch instead of the first')
    add_debug_flag(p)
    args = p.parse_args(argv)
    overrides = {'dataset': {k: v for k, v in (('dataroot', args.dataroot), ('version', args.version)) if v}}
    cfg = load_config(args.config or config_path('data/bundled.yaml'), overrides=overrides)
    return inspect(cfg, args.split, Path(args.out) if args.out else None, args.limit,
                   [k for k in args.pick.split(',') if k])


if __name__ == '__main__':
    sys.exit(main())
