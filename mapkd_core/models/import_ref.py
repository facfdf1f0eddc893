"""Import the authors' checkpoints (MapKD ``2004yan/MapKD_new``, P-MapNet, HDMapNet) into our models.

The authors' training scripts save plain PyTorch state dicts of their model classes (sometimes wrapped as
``{'model': ...}`` / ``{'state_dict': ...}``, sometimes with DataParallel's ``module.`` prefix). This module reads such
a file with ``torch.load(weights_only=True)`` only, maps every key to ours with an explicit table per model, checks
every shape, drops exactly the keys of modules the authors build but never run (and lists them), and writes our
safetensors model file (config embedded) that ``mapkd-eval``, ``mapkd-export``, ``Pipeline`` and ``student_node`` load.

====================  ================  =======================================================================
their model           ours              dropped (built by their code, never used in forward)
====================  ================  =======================================================================
``HDMapNet_cam``      ``hdmapnet_cam``  EfficientNet classification head (``_conv_head``, ``_bn1``, ``_fc``)
``PMapNet_sdmap_S``   ``student``       the same, plus ``input_proj``, ``conv_osm``, ``conv_up``
``PMapNet_sdmap_C``   ``coach``         the same (both encoders), plus the LSS branch's inner ``bevencode`` and
                                        ``reduce_to_3``; ``pp.dx/bx/nx/frustum`` are grid constants, checked
                                        against our config and not stored
``PMapNet_mae_head``  ``teacher``       the same, plus the first-stage decoder's embedding / direction heads
                                        (only its semantic logits feed the HD head) and the timm ViT's
                                        ``cls_token``, ``patch_embed`` and classifier ``head``
====================  ================  =======================================================================

Value transforms (exact up to float round-off): the student's feature-expansion conv biases are folded into the
following BatchNorm's running mean (ours has no bias before a BN); the PointPillars 2-D kernels are transposed (their
backbone runs on the (x, y) layout and transposes at the end, ours runs on (y, x)); the ViT position table keeps the
1250 rows their forward adds (``pos_embed[:, :-1]``).

Their inputs map to ours as: ``cam_to_ego = [rots | trans]``, ``intrinsics = post_rots @ intrins`` (intrinsics at the
network image size), the same camera order, ``lidar = lidar_data``, ``lidar_mask = lidar_mask > 0``,
``sd_prior = osm`` (see :func:`inputs_from_reference`).
"""
from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import torch

from ..cli import add_debug_flag, command
from ..errors import WeightsMismatchError, WeightsNotFoundError

__all__ = ['AUTHOR_MODELS', 'ImportReport', 'detect_author_model', 'import_reference', 'inputs_from_reference',
           'main', 'map_reference_state', 'read_reference_checkpoint']

#: the authors' model names (``model.get_model(method, ...)``) and ours
AUTHOR_MODELS: dict[str, str] = {
    'HDMapNet_cam': 'hdmapnet_cam',
    'PMapNet_sdmap_S': 'student',
    'PMapNet_sdmap_C': 'coach',
    'PMapNet_mae_head': 'teacher',
}

_FOLD = 'fold_bias_into_bn'
_TRANSPOSE = 'transpose_kernel'
_DROP_LAST_ROW = 'drop_last_position'

_BN = r'(weight|bias|running_mean|running_var|num_batches_tracked)'


@dataclass(frozen=True)
class Rule:
    """``pattern`` (a full-match regex on their key) -> ``target`` (our key, ``\\1`` ... from the groups) or None to
    drop it (``why`` says why); ``transform`` names a value transform."""

    pattern: str
    target: Optional[str]
    why: str = ''
    transform: Optional[str] = None


def _drop(pattern: str, why: str) -> Rule:
    return Rule(pattern, None, why)


# ----------------------------------------------------------------------------------------------------------------
# tables of the shared building blocks; ``p`` is their prefix, ``q`` ours (both end with a dot or are empty)


def _encoder(p: str, q: str) -> list[Rule]:
    """HDMapNet ``CamEncode`` / ``CamEncode_L`` (efficientnet-pytorch trunk + ``Up``) -> our ``CamEncoder``."""
    p = re.escape(p)
    return [
        Rule(p + r'trunk\.(_conv_stem\.weight)', q + r'trunk.\1'),
        Rule(p + r'trunk\.(_bn0\.)' + _BN, q + r'trunk.\1\2'),
        Rule(p + r'trunk\.(_blocks\.\d+\.\w+\.)' + r'(weight|bias|running_mean|running_var|num_batches_tracked)',
             q + r'trunk.\1\2'),
        _drop(p + r'trunk\._(conv_head|bn1|fc)\..*', 'EfficientNet classification head, never run'),
        Rule(p + r'up1\.conv\.0\.weight', q + 'up.conv.0.0.weight'),
        Rule(p + r'up1\.conv\.1\.' + _BN, q + r'up.conv.0.1.\1'),
        Rule(p + r'up1\.conv\.3\.weight', q + 'up.conv.1.0.weight'),
        Rule(p + r'up1\.conv\.4\.' + _BN, q + r'up.conv.1.1.\1'),
    ]


def _view(p: str, q: str) -> list[Rule]:
    """HDMapNet ``ViewTransformation`` (one MLP per camera) -> our ``MLPViewTransformer``."""
    return [Rule(re.escape(p) + r'hw_mat\.(\d+)\.(0|2)\.(weight|bias)', q + r'mlps.\1.\2.\3')]


_HEADS = (('', 'semantic'), ('_embedded', 'embedding'), ('_direction', 'direction'))


def _bevencode(p: str, q: str, heads=('semantic', 'embedding', 'direction'), unused_why: str = '') -> list[Rule]:
    """HDMapNet ``BevEncode`` (ResNet-18 trunk without max-pool, three ``up1*`` / ``up2*`` heads) -> our
    ``BevDecoder``; heads not in ``heads`` are dropped with ``unused_why``."""
    p = re.escape(p)
    rules = [
        Rule(p + r'conv1\.weight', q + 'stem.0.weight'),
        Rule(p + r'bn1\.' + _BN, q + r'stem.1.\1'),
        Rule(p + r'(layer\d\.\d\.)(conv1|conv2)\.weight', q + r'\1\2.weight'),
        Rule(p + r'(layer\d\.\d\.)(bn1|bn2)\.' + _BN, q + r'\1\2.\3'),
        Rule(p + r'(layer\d\.0\.)downsample\.0\.weight', q + r'\1shortcut.0.weight'),
        Rule(p + r'(layer\d\.0\.)downsample\.1\.' + _BN, q + r'\1shortcut.1.\2'),
    ]
    for suffix, head in _HEADS:
        if head not in heads:
            rules.append(_drop(p + rf'up[12]{suffix}\..*', unused_why))
            continue
        h = f'{q}heads.{head}.'
        rules += [
            Rule(p + rf'up1{suffix}\.conv\.0\.weight', h + 'up1.conv.0.0.weight'),
            Rule(p + rf'up1{suffix}\.conv\.1\.' + _BN, h + r'up1.conv.0.1.\1'),
            Rule(p + rf'up1{suffix}\.conv\.3\.weight', h + 'up1.conv.1.0.weight'),
            Rule(p + rf'up1{suffix}\.conv\.4\.' + _BN, h + r'up1.conv.1.1.\1'),
            Rule(p + rf'up2{suffix}\.1\.weight', h + 'up2.0.0.weight'),
            Rule(p + rf'up2{suffix}\.2\.' + _BN, h + r'up2.0.1.\1'),
            Rule(p + rf'up2{suffix}\.4\.(weight|bias)', h + r'up2.1.\1'),
        ]
    return rules


def _seq(p: str, q: str) -> list[Rule]:
    """``conv_bev`` / ``conv_up`` / ``conv_osm``: the same nn.Sequential layout on both sides (conv, ReLU, conv,
    ReLU, conv, BN, ReLU)."""
    return [Rule(re.escape(p) + r'([024])\.(weight|bias)', q + r'\1.\2'),
            Rule(re.escape(p) + r'5\.' + _BN, q + r'5.\1')]


def _sd_attention() -> list[Rule]:
    """P-MapNet ``SDMapCrossAttn`` + ``input_proj`` + ``conv_osm`` -> our ``SdCrossAttention`` (``sd.``)."""
    a = r'sdmap_crossattn\.'
    return [
        Rule(r'input_proj\.(weight|bias)', r'sd.input_proj.\1'),
        *_seq('conv_osm.', 'sd.conv_osm.'),
        Rule(a + r'layers\.(\d+)\.self_attn\.(in_proj_weight|in_proj_bias|out_proj\.weight|out_proj\.bias)',
             r'sd.layers.\1.self_attn.\2'),
        Rule(a + r'layers\.(\d+)\.multihead_attn\.(in_proj_weight|in_proj_bias|out_proj\.weight|out_proj\.bias)',
             r'sd.layers.\1.cross_attn.\2'),
        Rule(a + r'layers\.(\d+)\.(linear1|linear2|norm1|norm2|norm3)\.(weight|bias)', r'sd.layers.\1.\2.\3'),
        Rule(a + r'norm\.(weight|bias)', r'sd.norm.\1'),
    ]


def _camera_branch() -> list[Rule]:
    return _encoder('camencode.', 'camera.encoder.') + _view('view_fusion.', 'camera.view.')


def _pillars() -> list[Rule]:
    """HDMapNet ``PointPillarEncoder`` (``pp.``) -> our ``PointPillarsEncoder`` (``pillars.``); 2-D kernels are
    transposed (their backbone works on the (x, y) layout)."""
    rules = [
        Rule(r'pp\.pn\.pointnet\.0\.weight', 'pillars.pointnet.0.weight'),
        Rule(r'pp\.pn\.pointnet\.1\.' + _BN, r'pillars.pointnet.1.\1'),
        Rule(r'pp\.up1\.0\.weight', 'pillars.lateral1.0.weight', transform=_TRANSPOSE),
        Rule(r'pp\.up1\.1\.' + _BN, r'pillars.lateral1.1.\1'),
        Rule(r'pp\.conv_out\.6\.weight', 'pillars.head.2.weight', transform=_TRANSPOSE),
        Rule(r'pp\.conv_out\.6\.bias', 'pillars.head.2.bias'),
    ]
    for i in (2, 3):  # up2 / up3: Upsample, conv, BN, ReLU
        rules += [Rule(rf'pp\.up{i}\.1\.weight', f'pillars.lateral{i}.0.weight', transform=_TRANSPOSE),
                  Rule(rf'pp\.up{i}\.2\.' + _BN, rf'pillars.lateral{i}.1.\1')]
    for theirs, ours in ((0, 0), (3, 1)):  # conv_out: conv, BN, ReLU, conv, BN, ReLU, conv
        rules += [Rule(rf'pp\.conv_out\.{theirs}\.weight', f'pillars.head.{ours}.0.weight', transform=_TRANSPOSE),
                  Rule(rf'pp\.conv_out\.{theirs + 1}\.' + _BN, rf'pillars.head.{ours}.1.\1')]
    for block in (1, 2, 3):  # PillarBlock.layers: (conv, BN, ReLU) x n -> ours blockK.i.(0 conv, 1 BN)
        for layer in range(3):
            rules += [Rule(rf'pp\.block{block}\.layers\.{3 * layer}\.weight', f'pillars.block{block}.{layer}.0.weight',
                           transform=_TRANSPOSE),
                      Rule(rf'pp\.block{block}\.layers\.{3 * layer + 1}\.' + _BN,
                           rf'pillars.block{block}.{layer}.1.\1')]
    return rules


def _mae_head() -> list[Rule]:
    """P-MapNet ``MapVisionTransformer`` (``mae_head.``, a timm ViT-B/8) -> our ``HdPriorRefiner`` (``hd.``) and
    ``hd_decoder``."""
    m = r'mae_head\.'
    return [
        Rule(m + r'map_patch_embed\.proj\.(weight|bias)', r'hd.patch_embed.\1'),
        Rule(m + r'pos_embed', 'hd.pos_embed', transform=_DROP_LAST_ROW),
        Rule(m + r'blocks\.(\d+)\.(norm1|norm2|attn\.qkv|attn\.proj|mlp\.fc1|mlp\.fc2)\.(weight|bias)',
             r'hd.blocks.\1.\2.\3'),
        Rule(m + r'norm\.(weight|bias)', r'hd.norm.\1'),
        Rule(m + r'conv_up\.0\.(weight|bias)', r'hd.deconv1.\1'),
        Rule(m + r'conv_up\.1\.(weight|bias)', r'hd.deconv2.\1'),
        Rule(m + r'conv_up\.3\.conv\.weight', 'hd.out_conv.weight'),
        Rule(m + r'conv_up\.3\.bn\.' + _BN, r'hd.out_bn.\1'),
        *_bevencode('mae_head.bev_head.', 'hd_decoder.'),
        _drop(m + r'cls_token', 'timm ViT class token, not used by the map head'),
        _drop(m + r'patch_embed\.proj\..*', "timm ViT patch embedding, replaced by map_patch_embed in forward"),
        _drop(m + r'head\.(weight|bias)', 'timm ViT classifier head, never run'),
    ]


_NEVER_RUN = 'built by the model but never run in its forward'


def _table(author: str) -> list[Rule]:
    """The explicit key table of one of the authors' models."""
    if author == 'HDMapNet_cam':
        return _camera_branch() + _bevencode('bevencode.', 'decoder.')
    if author == 'PMapNet_sdmap_S':
        return _camera_branch() + [
            Rule(r'feature_expand\.conv1\.weight', 'expand.net.0.0.weight'),
            Rule(r'feature_expand\.conv1\.bias', 'expand.net.0.1.running_mean', transform=_FOLD),
            Rule(r'feature_expand\.bn1\.' + _BN, r'expand.net.0.1.\1'),
            Rule(r'feature_expand\.conv2\.weight', 'expand.net.1.0.weight'),
            Rule(r'feature_expand\.conv2\.bias', 'expand.net.1.1.running_mean', transform=_FOLD),
            Rule(r'feature_expand\.bn2\.' + _BN, r'expand.net.1.1.\1'),
            *_seq('conv_bev.', 'conv_bev.net.'),
            *_bevencode('bevencode.', 'decoder.'),
            _drop(r'input_proj\..*', _NEVER_RUN + ' (SD fusion code is commented out)'),
            _drop(r'conv_osm\..*', _NEVER_RUN + ' (SD fusion code is commented out)'),
            _drop(r'conv_up\..*', _NEVER_RUN + ' (SD fusion code is commented out)'),
        ]
    if author == 'PMapNet_sdmap_C':
        return _camera_branch() + _sd_attention() + [
            *_seq('conv_bev.', 'conv_bev.net.'),
            *_seq('conv_up.', 'conv_up.net.'),
            *_bevencode('bevencode.', 'decoder.'),
            *_encoder('pp.camencode.', 'sim_lidar.encoder.'),
            Rule(r'pp\.camencode\.depthnet\.(weight|bias)', r'sim_lidar.depthnet.\1'),
            Rule(r'expand_to_128\.(weight|bias)', r'sim_lidar.expand.\1'),
            _drop(r'pp\.bevencode\..*', "LiftSplat's own BevEncode, " + _NEVER_RUN),
            _drop(r'pp\.reduce_to_3\..*', _NEVER_RUN),
            _drop(r'pp\.(dx|bx|nx|frustum)', 'grid constant stored as a parameter (checked against our config)'),
        ]
    if author == 'PMapNet_mae_head':
        return _camera_branch() + _sd_attention() + _pillars() + _mae_head() + [
            *_seq('conv_bev.', 'conv_bev.net.'),
            *_seq('conv_up.', 'conv_up.net.'),
            *_bevencode('bevencode.', 'decoder.', heads=('semantic',),
                        unused_why='first-stage head whose output the model discards (only the semantic logits '
                                   'feed the HD head)'),
        ]
    raise WeightsMismatchError(f'unknown author model {author!r}; known: {sorted(AUTHOR_MODELS)}')


# ----------------------------------------------------------------------------------------------------------------
# reading


def read_reference_checkpoint(path: str | Path) -> dict[str, torch.Tensor]:
    """The state dict of one of the authors' checkpoints: ``torch.load(weights_only=True)`` only; a bare state dict
    or a ``{'model': ...}`` / ``{'state_dict': ...}`` wrapper; DataParallel's ``module.`` prefix removed."""
    path = Path(path)
    if not path.is_file():
        raise WeightsNotFoundError(f'checkpoint not found: {path}')
    try:
        obj = torch.load(path, map_location='cpu', weights_only=True)
    except Exception as exc:  # pickle.UnpicklingError for objects that need code, or a corrupt / foreign file
        text = str(exc).split('\n')[0]
        if 'weights_only' in str(exc) or 'Unsupported global' in str(exc) or 'GLOBAL' in str(exc):
            raise WeightsMismatchError(
                f'{path}: refusing to load: the file holds pickled objects that need code to be rebuilt, and it is '
                f'only read with torch.load(weights_only=True), which never runs code from a file ({text}). '
                'Re-save the state dict alone: torch.save(model.state_dict(), "plain.pt").') from None
        raise WeightsMismatchError(f'cannot read checkpoint {path}: {text}') from None
    return _state_dict_of(obj, str(path))


def _state_dict_of(obj, source: str) -> dict[str, torch.Tensor]:
    """A bare state dict from what a checkpoint holds: unwrap ``{'model': ...}`` / ``{'state_dict': ...}``, check
    that it maps names to tensors, drop DataParallel's ``module.`` prefix."""
    for key in ('model', 'state_dict', 'model_state_dict'):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not obj:
        raise WeightsMismatchError(f'{source} does not hold a state dict (got {type(obj).__name__})')
    bad = [str(k) for k, v in obj.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise WeightsMismatchError(f'{source} is not a state dict of tensors: {len(bad)} entries are not, e.g. '
                                   f'{", ".join(bad[:5])} (top-level keys: {", ".join(list(map(str, obj))[:8])})')
    if all(k.startswith('module.') for k in obj):
        obj = {k[len('module.'):]: v for k, v in obj.items()}
    return dict(obj)


def detect_author_model(state: dict[str, torch.Tensor]) -> str:
    """Which of the authors' models a state dict belongs to, from its key names."""
    keys = set(state)
    has = lambda prefix: any(k.startswith(prefix) for k in keys)  # noqa: E731
    if has('mae_head.') and has('pp.pn.'):
        return 'PMapNet_mae_head'
    if has('pp.camencode.') and has('sdmap_crossattn.'):
        return 'PMapNet_sdmap_C'
    if has('feature_expand.'):
        return 'PMapNet_sdmap_S'
    if has('camencode.') and has('view_fusion.') and has('bevencode.') and not has('conv_bev.'):
        return 'HDMapNet_cam'
    sample = ', '.join(sorted(keys)[:6])
    raise WeightsMismatchError(f'not a checkpoint of a known author model ({", ".join(AUTHOR_MODELS)}): its keys '
                               f'({len(keys)}, e.g. {sample}) match none of them; pass the model name explicitly '
                               'if it is one of these')


# ----------------------------------------------------------------------------------------------------------------
# mapping


@dataclass
class ImportReport:
    """What an import did: the models, every key placed, every key dropped (with why), the value transforms."""

    author_model: str
    our_model: str
    mapped: dict[str, str] = field(default_factory=dict)
    dropped: dict[str, str] = field(default_factory=dict)
    transformed: dict[str, str] = field(default_factory=dict)
    source: str = ''
    sha256: str = ''

    def summary(self) -> str:
        lines = [f'{self.author_model} -> {self.our_model}: {len(self.mapped)} keys mapped, '
                 f'{len(self.dropped)} dropped, {len(self.transformed)} transformed']
        by_why: dict[str, list[str]] = {}
        for k, why in self.dropped.items():
            by_why.setdefault(why, []).append(k)
        for why, keys in by_why.items():
            prefixes = sorted({re.sub(r'\.(weight|bias|running_mean|running_var|num_batches_tracked)$', '', k)
                               for k in keys})
            shown = ', '.join(prefixes[:6]) + (f' ... (+{len(prefixes) - 6})' if len(prefixes) > 6 else '')
            lines.append(f'  dropped {len(keys)} keys ({why}): {shown}')
        return '\n'.join(lines)


def _check_grid_constants(state: dict[str, torch.Tensor], model) -> None:
    """The coach's LiftSplat stores dx, bx, nx and the frustum as parameters: they must be our grid's."""
    cfg = model.cfg
    g = cfg.grid
    want = {
        'pp.dx': torch.tensor([g.xbound[2], g.ybound[2], g.zbound[2]], dtype=torch.float32),
        'pp.bx': torch.tensor([g.xbound[0] + g.xbound[2] / 2, g.ybound[0] + g.ybound[2] / 2,
                               g.zbound[0] + g.zbound[2] / 2], dtype=torch.float32),
        'pp.nx': torch.tensor([g.W, g.H, round((g.zbound[1] - g.zbound[0]) / g.zbound[2])]),
    }
    frustum = getattr(getattr(model, 'sim_lidar', None), 'frustum', None)
    bad = []
    for key, value in want.items():
        if key in state and (state[key].shape != value.shape or
                             not torch.allclose(state[key].double(), value.double(), atol=1e-5)):
            bad.append(f'{key} = {state[key].tolist()} (our grid: {value.tolist()})')
    if 'pp.frustum' in state and frustum is not None:
        theirs = state['pp.frustum']
        ours = torch.stack([frustum[..., 0] / frustum[..., 2], frustum[..., 1] / frustum[..., 2], frustum[..., 2]],
                           dim=-1)
        if theirs.shape != ours.shape or not torch.allclose(theirs, ours, atol=1e-3):
            bad.append(f'pp.frustum {tuple(theirs.shape)} differs from ours {tuple(ours.shape)} (image size or '
                       'depth bins)')
    if bad:
        raise WeightsMismatchError('the checkpoint was built for another grid / image size than the model config: '
                                   + '; '.join(bad))


def map_reference_state(state: dict[str, torch.Tensor], author: str, model) -> tuple[dict[str, torch.Tensor],
                                                                                    ImportReport]:
    """Map the authors' state dict onto ``model`` (one of ours, built): returns our state dict and the report.

    Every key of theirs must match exactly one rule of the model's table (placed or dropped); every key of ours must
    be produced exactly once; every shape must match. Anything else is a WeightsMismatchError naming the keys.
    """
    rules = [(re.compile(r.pattern), r) for r in _table(author)]
    own = model.state_dict()
    report = ImportReport(author, model.cfg.name)
    out: dict[str, torch.Tensor] = {}
    unplaced, ambiguous, duplicates, shapes = [], [], [], []
    folds: list[tuple[str, str, torch.Tensor]] = []
    for key, value in state.items():
        hits = [(rx.fullmatch(key), r) for rx, r in rules]
        hits = [(m, r) for m, r in hits if m]
        if not hits:
            unplaced.append(key)
            continue
        if len(hits) > 1:
            ambiguous.append(key)
            continue
        match, rule = hits[0]
        if rule.target is None:
            report.dropped[key] = rule.why
            continue
        target = match.expand(rule.target)
        if rule.transform == _FOLD:
            folds.append((key, target, value))
            continue
        if rule.transform == _TRANSPOSE and value.dim() == 4:
            value = value.transpose(2, 3)
        elif rule.transform == _DROP_LAST_ROW:
            value = value[:, :-1]
        if rule.transform:
            report.transformed[key] = rule.transform
        if target in out:
            duplicates.append(target)
        if target in own and own[target].shape != value.shape:
            shapes.append(f'{key} {tuple(value.shape)} -> {target} {tuple(own[target].shape)}')
        out[target] = value.detach().clone().contiguous()
        report.mapped[key] = target
    for key, target, bias in folds:  # BN(conv(x) + b) == BN'(conv(x)) with running_mean' = running_mean - b
        if target not in out:
            unplaced.append(f'{key} (its BatchNorm {target} is missing)')
            continue
        if out[target].shape != bias.shape:
            shapes.append(f'{key} {tuple(bias.shape)} -> {target} {tuple(out[target].shape)}')
            continue
        out[target] = out[target] - bias.to(out[target].dtype)
        report.mapped[key] = target
        report.transformed[key] = _FOLD
    missing = sorted(k for k in own if k not in out)
    unexpected = sorted(k for k in out if k not in own)
    problems = []
    for label, keys in (('key(s) of the checkpoint that no rule places', unplaced),
                        ('key(s) matched by several rules', ambiguous),
                        ('key(s) of ours produced twice', duplicates),
                        ('wrong shape', shapes),
                        (f'key(s) of our {model.cfg.name} not in the checkpoint', missing),
                        ('mapped key(s) our model does not have', unexpected)):
        if keys:
            shown = ', '.join(keys[:10]) + (f' ... (+{len(keys) - 10} more)' if len(keys) > 10 else '')
            problems.append(f'{len(keys)} {label}: {shown}')
    if problems:
        raise WeightsMismatchError(f'the {author} checkpoint does not fit our {model.cfg.name}: '
                                   + '; '.join(problems))
    if author == 'PMapNet_sdmap_C':
        _check_grid_constants(state, model)
    return out, report


# ----------------------------------------------------------------------------------------------------------------
# the whole import


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, 'rb') as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b''):
            h.update(chunk)
    return h.hexdigest()


def import_reference(checkpoint: str | Path | dict, out: str | Path | None = None, author: Optional[str] = None,
                     model_config: str | Path | None = None,
                     log: Optional[Callable[[str], None]] = None):
    """Import one of the authors' checkpoints into our model; optionally write our safetensors model file.

    Args:
        checkpoint: a ``.pt`` / ``.pth`` file of theirs (or an already loaded state dict).
        out: where to write our model file (``.safetensors``, config embedded); None = do not write.
        author: their model name (``HDMapNet_cam``, ``PMapNet_sdmap_S``, ``PMapNet_sdmap_C``, ``PMapNet_mae_head``);
            None = detected from the key names.
        model_config: our model config (a YAML path or a shipped name) to build; default the shipped paper-size
            config of the matching model (``hdmapnet_cam``, ``student``, ``coach``, ``teacher``).

    Returns:
        (model in eval mode, ImportReport).
    """
    import warnings

    from .io import load_state_strict, save_weights
    from .networks import build_model
    if isinstance(checkpoint, dict):
        state, source, sha = _state_dict_of(checkpoint, '<state dict>'), '<state dict>', ''
    else:
        state, source = read_reference_checkpoint(checkpoint), str(checkpoint)
        sha = _file_sha256(Path(checkpoint))
    if author is None:
        author = detect_author_model(state)
    if author not in AUTHOR_MODELS:
        raise WeightsMismatchError(f'unknown author model {author!r}; known: {", ".join(AUTHOR_MODELS)}')
    with warnings.catch_warnings():
        warnings.filterwarnings('ignore', message='no ImageNet weights')  # every weight comes from the checkpoint
        model = build_model(str(model_config) if model_config is not None else AUTHOR_MODELS[author])
    if model.cfg.name != AUTHOR_MODELS[author]:
        raise WeightsMismatchError(f'{author} imports into our {AUTHOR_MODELS[author]}, but the model config builds '
                                   f'a {model.cfg.name}')
    ours, report = map_reference_state(state, author, model)
    load_state_strict(model, ours, source)
    report.source, report.sha256 = source, sha
    model.eval()
    if log:
        log(report.summary())
    if out is not None:
        save_weights(model, out, extra={'imported_from': Path(source).name if sha else source,
                                        'author_model': author, 'source_sha256': sha,
                                        'dropped_keys': sorted(report.dropped)})
        if log:
            log(f'wrote {out}')
    return model, report


def inputs_from_reference(ref: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our model inputs from the authors' forward arguments (``img``, ``trans``, ``rots``, ``intrins``,
    ``post_rots``, ``post_trans``, ``lidar_data``, ``lidar_mask``, ``osm``): same camera order; ``cam_to_ego`` =
    [rots | trans]; intrinsics at the network image size = ``post_rots @ intrins`` (plus ``post_trans`` in the last
    column, 0 in their pipeline)."""
    rots, trans = ref['rots'].float(), ref['trans'].float()
    b, n = rots.shape[:2]
    cam_to_ego = torch.eye(4).repeat(b, n, 1, 1)
    cam_to_ego[..., :3, :3] = rots
    cam_to_ego[..., :3, 3] = trans
    k = ref['post_rots'].float() @ ref['intrins'].float()
    if 'post_trans' in ref:
        k = k.clone()
        k[..., :2, 2] += ref['post_trans'].float()[..., :2]
    out = {'images': ref['img'].float(), 'intrinsics': k, 'cam_to_ego': cam_to_ego}
    if 'lidar_data' in ref:
        out['lidar'] = ref['lidar_data'].float()
        out['lidar_mask'] = ref['lidar_mask'] > 0.5
    if 'osm' in ref:
        out['sd_prior'] = ref['osm'].float()
    return out


@command('mapkd-import')
def main(argv=None) -> int:
    """``mapkd-import``: convert one of the authors' checkpoints into our safetensors model file."""
    import argparse
    p = argparse.ArgumentParser(
        prog='mapkd-import',
        description="Import a MapKD / P-MapNet / HDMapNet checkpoint of the authors' code into our model file "
                    '(safetensors, config embedded), checking every key and shape.')
    p.add_argument('checkpoint', help="the authors' .pt / .pth file (state dict, optionally wrapped / module.)")
    p.add_argument('--out', default=None,
                   help='our model file to write (default: <checkpoint stem>_<our model>.safetensors beside it)')
    p.add_argument('--model', choices=sorted(AUTHOR_MODELS), default=None,
                   help="their model name (default: detected from the key names)")
    p.add_argument('--config', default=None,
                   help='our model config to build (YAML path or shipped name; default: the paper-size config of '
                        'the matching model)')
    add_debug_flag(p)
    args = p.parse_args(argv)
    ckpt = Path(args.checkpoint)
    state = read_reference_checkpoint(ckpt)
    author = args.model or detect_author_model(state)
    out = Path(args.out) if args.out else ckpt.with_name(f'{ckpt.stem}_{AUTHOR_MODELS[author]}.safetensors')
    import_reference(ckpt, out, author=author, model_config=args.config, log=print)
    return 0


if __name__ == '__main__':
    import sys
    sys.exit(main())
