"""Per-sample appearance of the synthetic world, from a seed: colours, exposure, tint, noise, worn markings, a
road-surface texture (grain and repaired patches) and the shadows of the agent boxes under a random sun."""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from .world import (CURB, LANE_PAINT, OBJECT, OFFROAD, PED_PAINT, ROAD, ROAD_DIVIDER_PAINT, SIDEWALK, SKY,
                    PAINT_CLASSES)

#: agent box colours (RGB): no near-white, so that only paint is bright and unsaturated on the ground
AGENT_PALETTE = np.array([[150, 30, 30], [30, 60, 140], [40, 40, 45], [110, 110, 115], [160, 130, 40],
                          [30, 100, 60], [120, 70, 40], [80, 30, 90], [170, 90, 30], [60, 90, 100]], np.float32)


@dataclass
class Style:
    lut: np.ndarray  # (n_classes, 3) RGB colours of the ground classes
    sky: np.ndarray
    haze: np.ndarray
    exposure: float
    tint: np.ndarray
    noise_sigma: float
    wear: float  # fraction of paint worn away
    sun_azimuth: float = 0.0  # radians, in the keyframe's ego frame
    sun_elevation: float = 0.8  # radians above the horizon
    shadow: float = 0.6  # brightness factor inside a shadow
    grain: float = 6.0  # std of the per-texel road-surface grain, grey levels
    patches: float = 0.15  # amplitude of darker / lighter repaired patches (relative)

    @classmethod
    def sample(cls, rng: np.random.Generator, city: str) -> 'Style':
        lut = np.zeros((SKY + 1, 3), np.float32)
        asphalt = rng.uniform(70, 105)
        lut[ROAD] = asphalt + rng.uniform(-4, 4, 3)
        lut[OFFROAD] = np.array([75, 95, 60]) * rng.uniform(0.8, 1.15) + rng.uniform(-8, 8, 3)
        lut[SIDEWALK] = rng.uniform(140, 170) + rng.uniform(-5, 5, 3)
        lut[CURB] = rng.uniform(120, 150) + rng.uniform(-4, 4, 3)
        white = rng.uniform(215, 245)
        lut[LANE_PAINT] = white
        lut[PED_PAINT] = white
        # road dividers: yellow in Boston (US practice), white in Singapore
        lut[ROAD_DIVIDER_PAINT] = [230, 190, 40] if city.startswith('boston') else [white] * 3
        lut[OBJECT] = 100
        sky = np.array([135, 175, 225], np.float32) * rng.uniform(0.85, 1.1)
        haze = np.array([190, 195, 200], np.float32) * rng.uniform(0.85, 1.05)
        return cls(lut=lut, sky=np.clip(sky, 0, 255), haze=np.clip(haze, 0, 255),
                   exposure=float(rng.uniform(0.8, 1.2)), tint=rng.uniform(0.94, 1.06, 3).astype(np.float32),
                   noise_sigma=float(rng.uniform(2.0, 6.0)), wear=float(rng.uniform(0.0, 0.3)),
                   sun_azimuth=float(rng.uniform(-np.pi, np.pi)), sun_elevation=float(rng.uniform(0.5, 1.3)),
                   shadow=float(rng.uniform(0.45, 0.75)), grain=float(rng.uniform(3.0, 10.0)),
                   patches=float(rng.uniform(0.0, 0.25)))


def wear_markings(classes: np.ndarray, wear: float, rng: np.random.Generator) -> np.ndarray:
    """Turn a fraction ``wear`` of the painted texels back into road, in blotches (low-frequency noise)."""
    if wear <= 0:
        return classes
    n = classes.shape[0]
    field = cv2.resize(rng.random((max(2, n // 40), max(2, n // 40))).astype(np.float32), (n, n),
                       interpolation=cv2.INTER_LINEAR)
    paint = np.isin(classes, PAINT_CLASSES)
    worn = paint & (field < wear)
    out = classes.copy()
    out[worn] = ROAD
    return out


def colour_texture(classes: np.ndarray, style: Style, rng: np.random.Generator) -> np.ndarray:
    """uint8 RGB texture of a class map: low-frequency shading everywhere, and on the road a fine grain and
    repaired patches (blotches a few metres across), so that the asphalt is never one flat colour."""
    n = classes.shape[0]
    low = max(2, n // 60)
    shade = cv2.resize((0.9 + 0.2 * rng.random((low, low))).astype(np.float32), (n, n),
                       interpolation=cv2.INTER_LINEAR)
    blotch = rng.random((max(2, n // 50), max(2, n // 50))).astype(np.float32) - 0.5
    patch = cv2.resize(style.patches * np.sign(blotch) * (np.abs(blotch) > 0.25), (n, n),
                       interpolation=cv2.INTER_LINEAR)
    road = (classes == ROAD).astype(np.float32)  # masks as factors: much faster than boolean indexing here
    shade *= 1.0 + patch * road
    tex = style.lut[classes]
    tex *= shade[..., None]
    # grain at 2 texels (10 cm at the default resolution): a quarter of the random numbers, the same look
    half = (n + 1) // 2
    grain = cv2.resize(rng.standard_normal((half, half), dtype=np.float32) * np.float32(style.grain), (2 * half,) * 2,
                       interpolation=cv2.INTER_NEAREST)[:n, :n]
    tex += (grain * road)[..., None]
    return np.clip(tex, 0, 255, out=tex).astype(np.uint8)


def cast_shadows(texture: np.ndarray, ground, boxes, style: Style) -> None:
    """Darken, in place, the ground texture under the shadow of every box: the convex hull of its footprint and
    of its roof corners projected along the sun direction onto the ground (boxes in the texture's ego frame)."""
    if not boxes:
        return
    reach = 1.0 / np.tan(style.sun_elevation)
    away = -np.array([np.cos(style.sun_azimuth), np.sin(style.sun_azimuth)]) * reach
    mask = np.zeros(texture.shape[:2], np.uint8)
    for b in boxes:
        foot = b.corners()[:4, :2]
        pts = np.vstack([foot, foot + away * b.lwh[2]])
        col, row = ground.to_pixel(pts[:, 0], pts[:, 1])
        if (col.max() < 0 or row.max() < 0 or col.min() >= mask.shape[1] or row.min() >= mask.shape[0]):
            continue
        hull = cv2.convexHull(np.round(np.column_stack([col, row]) * 8).astype(np.int32))
        cv2.fillConvexPoly(mask, hull, 1, shift=3)
    if mask.any():
        x, y, w, h = cv2.boundingRect(mask)
        x0, y0 = max(0, x - 6), max(0, y - 6)
        x1, y1 = min(mask.shape[1], x + w + 6), min(mask.shape[0], y + h + 6)
        soft = cv2.GaussianBlur(mask[y0:y1, x0:x1].astype(np.float32), (0, 0), 1.5)
        factor = 1.0 - (1.0 - style.shadow) * soft
        region = texture[y0:y1, x0:x1]
        region[:] = np.clip(region * factor[..., None], 0, 255).astype(np.uint8)


def finish_image(img: np.ndarray, style: Style, rng: np.random.Generator) -> np.ndarray:
    """Exposure, tint and sensor noise; returns uint8 RGB."""
    out = img * (style.exposure * style.tint)[None, None, :]
    out += rng.standard_normal(out.shape, dtype=np.float32) * np.float32(style.noise_sigma)
    return np.clip(out, 0, 255).astype(np.uint8)
