"""HDMapNet, camera only (``HDMapNet_cam``): the baseline student of the MapKD paper's table (31.16 mIoU, 23.13 mAP).

It is our paper student without the feature expansion and the 1/8 bottleneck: EfficientNet-B0 encoder -> per-camera
MLP view transformer -> IPM -> x2 upsampling (the 64-channel camera BEV) -> BevEncode with the three heads. The
authors' checkpoints import with ``mapkd-import`` (``mapkd_core.models.import_ref``); it trains with the ``student``
stage (task losses, optionally MSRD; TGPD needs the 192-channel 1/8 feature it does not have).

``MapOutput.bev`` is the camera BEV (B, 64, H, W): the model has no 1/8 bottleneck.
"""
from __future__ import annotations

from .blocks import BevDecoder
from .config import ModelConfig
from .networks import MapModel, MapOutput, _camera_branch


class HdmapnetCam(MapModel):
    """HDMapNet camera model: camera BEV (64 channels) -> BevEncode -> semantic / embedding / direction."""

    def __init__(self, cfg: ModelConfig):
        super().__init__(cfg)
        self.camera = _camera_branch(cfg)
        self.decoder = BevDecoder(cfg.camera_channels, cfg.decoder, self.head_channels)

    def forward(self, images, intrinsics=None, cam_to_ego=None, lidar=None, lidar_mask=None,
                sd_prior=None) -> MapOutput:
        self._check_cameras(images)
        topdown = self.camera(images, intrinsics, cam_to_ego)
        out = self.decoder(topdown)
        return MapOutput(out['semantic'], out['embedding'], out['direction'], topdown, {'camera_bev': topdown})
