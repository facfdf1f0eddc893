"""Rendering what a real camera would see of the synthetic world.

The ground is the plane z = 0 of the ego frame at the image's timestamp (the ego frame sits on the road). For every
pixel the ray through it is intersected with that plane once per camera (calibration and size are fixed for a
dataset); per image the ground points are moved into the keyframe's ego frame (the camera fires up to ~45 ms before
the LiDAR keyframe, as in nuScenes) and the painted ground texture is sampled with ``cv2.remap``. Rays above the
horizon see the sky; the ground fades into haze with distance. Tracked agents are solid boxes of their real sizes and
poses, drawn far to near (painter's algorithm) over the ground after clipping at the near plane, so they occlude it.
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from ...geometry import invert_transform
from .world import OBJECT, SKY, GroundPatch

NEAR = 0.2  # metres: box faces are clipped at this camera depth
#: the 6 faces of a box as indices into its 8 corners (bottom 0-3, top 4-7, each clockwise seen from above: front
#: left, front right, rear right, rear left; the back-face test uses the face centres, not the winding)
BOX_FACES = ((0, 1, 2, 3), (4, 5, 6, 7), (0, 1, 5, 4), (1, 2, 6, 5), (2, 3, 7, 6), (3, 0, 4, 7))


@dataclass
class Box:
    """An agent box in an ego frame: centre (x, y) on the ground, heading, (length, width, height)."""

    x: float
    y: float
    heading: float
    lwh: tuple[float, float, float]
    colour: tuple[int, int, int]

    def corners(self) -> np.ndarray:
        length, width, height = self.lwh
        c, s = np.cos(self.heading), np.sin(self.heading)
        dx = np.array([1, 1, -1, -1]) * length / 2
        dy = np.array([1, -1, -1, 1]) * width / 2
        x = self.x + c * dx - s * dy
        y = self.y + s * dx + c * dy
        bottom = np.stack([x, y, np.zeros(4)], 1)
        top = np.stack([x, y, np.full(4, height)], 1)
        return np.vstack([bottom, top])


class CameraModel:
    """A camera at a fixed image size with its ray-ground intersections precomputed."""

    def __init__(self, channel: str, intrinsic: np.ndarray, cam_to_ego: np.ndarray, width: int, height: int,
                 max_range: float):
        self.channel = channel
        self.k = np.asarray(intrinsic, dtype=np.float64)
        self.cam_to_ego = np.asarray(cam_to_ego, dtype=np.float64)
        self.ego_to_cam = invert_transform(self.cam_to_ego)
        self.width, self.height = width, height
        u, v = np.meshgrid(np.arange(width, dtype=np.float64), np.arange(height, dtype=np.float64))
        rays_cam = np.stack([u, v, np.ones_like(u)], -1) @ np.linalg.inv(self.k).T
        rays = rays_cam @ self.cam_to_ego[:3, :3].T  # ego frame directions
        origin = self.cam_to_ego[:3, 3]
        down = rays[..., 2] < -1e-6
        s = np.where(down, -origin[2] / np.where(down, rays[..., 2], -1.0), np.inf)
        gx = origin[0] + s * rays[..., 0]
        gy = origin[1] + s * rays[..., 1]
        dist = np.hypot(gx - origin[0], gy - origin[1])
        self.ground_mask = down & (dist < max_range)
        self.ground_xy = np.stack([np.where(self.ground_mask, gx, 0.0), np.where(self.ground_mask, gy, 0.0)], -1)
        self.distance = np.where(self.ground_mask, dist, np.inf).astype(np.float32)
        # elevation of each ray above the horizon, for the sky gradient
        self.elevation = np.arcsin(np.clip(rays[..., 2] / np.linalg.norm(rays, axis=-1), -1, 1)).astype(np.float32)

    def render(self, ground: GroundPatch, colours: np.ndarray, cam_ego_to_key_ego: np.ndarray, boxes: list[Box],
               sky_colour: np.ndarray, haze_colour: np.ndarray, fog_start: float) -> tuple[np.ndarray, np.ndarray]:
        """RGB float32 image (H, W, 3) in [0, 255] and the ground-class label of every pixel.

        ``colours`` is the colour texture (same grid as ``ground.classes``); ``cam_ego_to_key_ego`` the 3x3 planar
        transform from the ego frame at this image's time to the keyframe's ego frame; ``boxes`` are in the ego frame
        at this image's time.
        """
        a = cam_ego_to_key_ego
        gx = a[0, 0] * self.ground_xy[..., 0] + a[0, 1] * self.ground_xy[..., 1] + a[0, 2]
        gy = a[1, 0] * self.ground_xy[..., 0] + a[1, 1] * self.ground_xy[..., 1] + a[1, 2]
        col, row = ground.to_pixel(gx, gy)
        map_x, map_y = col.astype(np.float32), row.astype(np.float32)
        img = cv2.remap(colours, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT,
                        borderValue=tuple(float(c) for c in haze_colour)).astype(np.float32)
        labels = cv2.remap(ground.classes, map_x, map_y, cv2.INTER_NEAREST, borderMode=cv2.BORDER_CONSTANT,
                           borderValue=0)
        # haze with distance on the ground, sky gradient above the horizon
        extent = ground.extent
        fog = np.clip((self.distance - fog_start) / max(extent - fog_start, 1e-3), 0.0, 1.0)[..., None] * 0.8
        img = img * (1 - fog) + haze_colour[None, None, :] * fog
        sky = ~self.ground_mask
        t = np.clip(self.elevation[sky] / 0.35, 0.0, 1.0)[:, None]
        img[sky] = haze_colour[None, :] * (1 - t) + sky_colour[None, :] * t
        labels[sky] = SKY
        self._draw_boxes(img, labels, boxes)
        return img, labels

    def _draw_boxes(self, img: np.ndarray, labels: np.ndarray, boxes: list[Box]) -> None:
        if not boxes:
            return
        cam_pos = self.cam_to_ego[:3, 3]
        order = sorted(boxes, key=lambda b: -np.hypot(b.x - cam_pos[0], b.y - cam_pos[1]))
        light = np.array([0.3, 0.5, 0.8])
        light /= np.linalg.norm(light)
        for b in order:
            corners = b.corners()
            cam = corners @ self.ego_to_cam[:3, :3].T + self.ego_to_cam[:3, 3]
            if np.all(cam[:, 2] < NEAR):
                continue
            centre = corners.mean(0)
            for face in BOX_FACES:
                pts_ego = corners[list(face)]
                normal = pts_ego.mean(0) - centre
                if normal @ (pts_ego.mean(0) - cam_pos) >= 0:  # faces away from the camera
                    continue
                poly = clip_near(cam[list(face)], NEAR)
                if len(poly) < 3:
                    continue
                uv = (poly @ self.k.T)[:, :2] / poly[:, 2:3]
                if np.all(uv[:, 0] < 0) or np.all(uv[:, 0] >= self.width) or np.all(uv[:, 1] < 0) \
                        or np.all(uv[:, 1] >= self.height):
                    continue
                n = normal / (np.linalg.norm(normal) + 1e-9)
                shade = 0.55 + 0.45 * abs(float(n @ light))
                pts = np.round(np.clip(uv, -1e5, 1e5) * 8).astype(np.int32)
                cv2.fillConvexPoly(img, pts, tuple(float(c) * shade for c in b.colour), shift=3)
                cv2.fillConvexPoly(labels, pts, OBJECT, shift=3)


def clip_near(poly: np.ndarray, near: float) -> np.ndarray:
    """Clip a convex polygon (N, 3) in camera coordinates to z >= near (Sutherland-Hodgman, one plane)."""
    out = []
    n = len(poly)
    for i in range(n):
        a, b = poly[i], poly[(i + 1) % n]
        a_in, b_in = a[2] >= near, b[2] >= near
        if a_in:
            out.append(a)
        if a_in != b_in:
            t = (near - a[2]) / (b[2] - a[2])
            out.append(a + t * (b - a))
    return np.array(out)
