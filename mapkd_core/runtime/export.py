"""ONNX export of the students (``mapkd-export``) and the checks that tie an ONNX file to its weights.

Choice for the calibration-dependent geometry: **it is a model input**. The graph takes ``images`` (1, N, 3, h, w),
``intrinsics`` (1, N, 3, 3) at the model's image size and ``cam_to_ego`` (1, N, 4, 4), and computes the IPM / ground
sampling grids inside the graph (plain matrix ops and bilinear sampling). One exported file serves every vehicle with
the same camera set and image size; recalibrating a vehicle needs no re-export. Shapes are static (batch 1, the model's
camera count and image size): what TensorRT optimises best and what the node feeds.

The paper student's MLP view transformer learns the intrinsics implicitly and does not read them, so its graph has
no ``intrinsics`` input (the exporter drops unused inputs); the backends feed the inputs a graph has.

Bilinear sampling is exported as row gathers (:func:`gather_grid_sample`), not as ONNX ``GridSample``: ONNX
Runtime's CPU ``GridSample`` kernel took 45% of the edge student's inference (172 of 378 ms, one thread), the
gathers a few ms; the outputs equal torch's within float rounding (about 4e-7). The torch model is unchanged.

Outputs: ``semantic`` (1, 4, H, W), ``embedding`` (1, 16, H, W), ``direction`` (1, 37, H, W). The file's metadata
holds the model config, the class names, the camera order and the SHA-256 of the weights file it came from, so a
pipeline refuses an ONNX file exported from another model.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import warnings
from pathlib import Path

import torch

from ..constants import CLASS_NAMES
from ..errors import UsageError, WeightsMismatchError
from ..models.blocks import bilinear_corners
from ..models.io import model_config_yaml

INPUTS = ('images', 'intrinsics', 'cam_to_ego')
OUTPUTS = ('semantic', 'embedding', 'direction')
DEFAULT_OPSET = 17
EXPORT_FORMAT = 3  # bumped when the exported graph changes for the same weights (2: sampling as gathers; 3: the edge
#                   student's ground sampler as one gather and one matrix product)


class ExportWrapper(torch.nn.Module):
    """Positional inputs and a tuple of outputs, for exporters."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, images, intrinsics, cam_to_ego):
        out = self.model(images=images, intrinsics=intrinsics, cam_to_ego=cam_to_ego)
        return out.semantic, out.embedding, out.direction


def gather_grid_sample(inp: torch.Tensor, grid: torch.Tensor, mode: str = 'bilinear', padding_mode: str = 'zeros',
                       align_corners: bool | None = None) -> torch.Tensor:
    """``F.grid_sample`` (4-D, bilinear, zero padding, ``align_corners=False``) written as row gathers, which export
    to ONNX ``Gather`` / ``Mul`` / ``Add``; other settings fall back to ``F.grid_sample``. Same unnormalisation
    and corner weights as torch: the result equals it within float rounding."""
    if inp.dim() != 4 or mode != 'bilinear' or padding_mode != 'zeros' or align_corners:
        return _GRID_SAMPLE(inp, grid, mode=mode, padding_mode=padding_mode, align_corners=align_corners)
    n, c, h, w = inp.shape
    gh, gw = grid.shape[1:3]
    table = inp.permute(0, 2, 3, 1).reshape(n * h * w, c)  # one row of channels per input pixel
    x = ((grid[..., 0] + 1) * w - 1) / 2  # (n, gh, gw) pixel coordinates, as torch with align_corners=False
    y = ((grid[..., 1] + 1) * h - 1) / 2
    base = (torch.arange(n, dtype=torch.int64, device=inp.device) * (h * w)).view(n, 1, 1)
    out = None
    for idx, wt in bilinear_corners(x, y, h, w):
        term = table[(base + idx).reshape(-1)].view(n, gh, gw, c) * wt[..., None]
        out = term if out is None else out + term
    return out.permute(0, 3, 1, 2)


_GRID_SAMPLE = torch.nn.functional.grid_sample


@contextlib.contextmanager
def sampling_as_gathers():
    """While exporting: ``F.grid_sample`` is :func:`gather_grid_sample` (the models call it through ``F``) and the
    edge student's ground sampler runs :meth:`~mapkd_core.models.edge.GroundSampler.forward_gathered`."""
    from ..models.edge import GroundSampler
    sampler_forward = GroundSampler.forward
    torch.nn.functional.grid_sample = gather_grid_sample
    GroundSampler.forward = GroundSampler.forward_gathered
    try:
        yield
    finally:
        torch.nn.functional.grid_sample = _GRID_SAMPLE
        GroundSampler.forward = sampler_forward


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, 'rb') as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b''):
            h.update(chunk)
    return h.hexdigest()


def example_inputs(cfg) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    n = len(cfg.image.cameras)
    k = torch.tensor([[cfg.image.width * 0.8, 0, cfg.image.width / 2], [0, cfg.image.width * 0.8, cfg.image.height / 2],
                      [0, 0, 1.0]])
    return (torch.zeros(1, n, 3, cfg.image.height, cfg.image.width), k.expand(1, n, 3, 3).contiguous(),
            torch.eye(4).expand(1, n, 4, 4).contiguous())


def export_onnx(model, out_path: str | Path, weights_path: str | Path | None = None,
                opset: int = DEFAULT_OPSET) -> Path:
    """Export a student to ONNX (static shapes, opset >= 16 for GridSample), with metadata, and check it."""
    import onnx
    if model.cfg.name not in ('student', 'student_edge', 'hdmapnet_cam'):
        raise UsageError(f'only the camera-only models (students, hdmapnet_cam) run on the vehicle; '
                         f'{model.cfg.name} is not exported')
    if opset < 16:
        raise UsageError(f'opset {opset} is too old: GridSample needs opset 16 or later')
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    was_training = model.training
    # the wrapper must be in eval mode too: the exporter restores the wrapper's mode recursively afterwards
    wrapper = ExportWrapper(model.cpu()).eval()
    tmp = out_path.with_name(out_path.name + '.tmp')
    with torch.no_grad(), warnings.catch_warnings(), sampling_as_gathers():
        # the tracer warns about shape checks and static sizes: shapes are static by design (see the module doc)
        warnings.filterwarnings('ignore', category=torch.jit.TracerWarning)
        warnings.filterwarnings('ignore', message='Constant folding')
        torch.onnx.export(wrapper, example_inputs(model.cfg), str(tmp), input_names=list(INPUTS),
                          output_names=list(OUTPUTS), opset_version=opset, dynamo=False, do_constant_folding=True)
    model.train(was_training)
    proto = onnx.load(str(tmp))
    meta = {'mapkd_model': model.cfg.name, 'mapkd_model_config': model_config_yaml(model.cfg),
            'mapkd_class_names': json.dumps(list(CLASS_NAMES)), 'mapkd_cameras': json.dumps(list(model.cfg.image.cameras)),
            'mapkd_weights_sha256': file_sha256(weights_path) if weights_path else '',
            'mapkd_export_format': str(EXPORT_FORMAT)}
    for key, value in meta.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.checker.check_model(proto)
    onnx.save(proto, str(tmp))
    tmp.replace(out_path)
    return out_path


def onnx_metadata(path: str | Path) -> dict[str, str]:
    import onnx
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as exc:
        raise WeightsMismatchError(f'cannot read ONNX file {path}: {exc}') from None
    return {p.key: p.value for p in proto.metadata_props}


def check_onnx_matches(onnx_path: str | Path, weights_path: str | Path) -> None:
    """Raise WeightsMismatchError when the ONNX file was not exported from this weights file."""
    meta = onnx_metadata(onnx_path)
    want = file_sha256(weights_path)
    got = meta.get('mapkd_weights_sha256')
    if not got:
        raise WeightsMismatchError(f'{onnx_path} was not exported by mapkd-export (no weights hash in its metadata)')
    if got != want:
        raise WeightsMismatchError(f'{onnx_path} was exported from another model (weights sha256 {got[:12]}..., '
                                   f'{weights_path} is {want[:12]}...): export it again with mapkd-export')
