"""Per-sample appearance of the synthetic world: colours, exposure, tint, noise and worn markings, from a seed."""
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
                   noise_sigma=float(rng.uniform(2.0, 6.0)), wear=float(rng.uniform(0.0, 0.3)))


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
    """uint8 RGB texture of a class map, with low-frequency shading so that surfaces are not flat."""
    tex = style.lut[classes]
    n = classes.shape[0]
    shade = cv2.resize((0.9 + 0.2 * rng.random((max(2, n // 60), max(2, n // 60)))).astype(np.float32), (n, n),
                       interpolation=cv2.INTER_LINEAR)
    tex *= shade[..., None]
    return np.clip(tex, 0, 255).astype(np.uint8)


def finish_image(img: np.ndarray, style: Style, rng: np.random.Generator) -> np.ndarray:
    """Exposure, tint and sensor noise; returns uint8 RGB."""
    out = img * (style.exposure * style.tint)[None, None, :]
    out += rng.normal(0.0, style.noise_sigma, size=out.shape).astype(np.float32)
    return np.clip(out, 0, 255).astype(np.uint8)
