"""Evaluation: pooled IoU, raster -> polyline vectorization (ours and the DBSCAN reference), Chamfer AP, reports."""
from .ap import APConfig, APMeter
from .iou import IoUMeter
from .vectorize import VectorizeConfig, vectorize

__all__ = ['APConfig', 'APMeter', 'IoUMeter', 'VectorizeConfig', 'vectorize']
