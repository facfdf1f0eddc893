"""The polyline type shared by the map ground truth, the vectorizer, evaluation and the runtime."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..constants import CLASS_NAMES


@dataclass
class MapVector:
    """One map element as a polyline in the ego frame.

    ``cls`` is the semantic channel (1 divider, 2 ped_crossing, 3 boundary); ``points`` is (N, 2) metres (x forward,
    y left); ``score`` is 1 for ground truth and the confidence for predictions.
    """

    cls: int
    points: np.ndarray
    score: float = 1.0

    def __post_init__(self):
        self.points = np.asarray(self.points, dtype=np.float64).reshape(-1, 2)
        if not 1 <= int(self.cls) < len(CLASS_NAMES):
            raise ValueError(f'MapVector class must be 1..{len(CLASS_NAMES) - 1}, got {self.cls}')
        self.cls = int(self.cls)

    @property
    def class_name(self) -> str:
        return CLASS_NAMES[self.cls]

    @property
    def length(self) -> float:
        if len(self.points) < 2:
            return 0.0
        return float(np.linalg.norm(np.diff(self.points, axis=0), axis=1).sum())
