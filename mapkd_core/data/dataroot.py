"""The names a config may give instead of a path (``dataset.dataroot``, ``split_file``, ``sd_prior.osm_dir``,
weights files): ``bundled`` / ``bundled/<sub>`` for the bundled real data, ``synthetic`` and ``synthetic_drives``
for the synthetic datasets (generated into the cache root on first use).

It lives in the data layer, not in :mod:`mapkd_core.paths`, because naming a synthetic dataset can start its
generation; the generator is imported only when one of those names is resolved.
"""
from __future__ import annotations

import os
from pathlib import Path

from ..paths import bundled_dataroot


def resolve_data_path(value, base: Path | None = None) -> Path:
    """Resolve a path from a config: ``bundled`` / ``bundled/<sub>`` name the bundled data, ``synthetic`` the
    default synthetic dataset (generated into the cache on first use: all ten scenes, keyframes, 800x450, seed 0),
    ``synthetic_drives`` the same scenes plus the virtual drives with the geo_train / geo_val splits (704x396),
    ``synthetic_drives[geo_train=1200,geo_val=300]`` only those frames of its drive splits (as ``train_limit`` /
    ``limit`` would pick them from the whole one: the same bytes, a quarter of the rendering; see ``parse_subset``),
    a relative path is taken relative to ``base`` (default: the current directory), ``~`` is expanded."""
    text = str(value)
    if text == 'synthetic':
        from .synth.cache import synthetic_dataroot
        return synthetic_dataroot()
    if text == 'synthetic_drives':
        from .synth.cache import DRIVES, synthetic_dataroot
        return synthetic_dataroot(DRIVES)
    if text.startswith('synthetic_drives['):
        import dataclasses
        from .synth.cache import DRIVES, synthetic_dataroot
        return synthetic_dataroot(dataclasses.replace(DRIVES, subset=parse_subset(text)))
    if text == 'bundled' or text.startswith('bundled/'):
        root = bundled_dataroot()
        return root if text == 'bundled' else root / text[len('bundled/'):]
    path = Path(os.path.expanduser(text))
    if not path.is_absolute() and base is not None:
        path = Path(base) / path
    return path


def parse_subset(text: str) -> tuple[tuple[str, int], ...]:
    """``synthetic_drives[geo_train=1200,geo_val=300]`` -> (('geo_train', 1200), ('geo_val', 300)); a count of 0
    keeps the whole split. Raises UsageError naming the bad part."""
    from ..errors import UsageError
    from .synth.drives import DRIVE_SPLITS
    from .synth.generate import SynthConfig
    usage = (f'{text!r}: expected synthetic_drives[<split>=<count>,...] with split in {", ".join(DRIVE_SPLITS)} '
             'and count >= 0 (0: the whole split)')
    if not (text.startswith('synthetic_drives[') and text.endswith(']')):
        raise UsageError(usage)
    items = []
    for part in text[len('synthetic_drives['):-1].split(','):
        split, eq, count = part.strip().partition('=')
        if not eq or not count.strip().isdigit():
            raise UsageError(f'{usage}; bad part {part!r}')
        items.append((split.strip(), int(count)))
    try:  # the split names and repeats: the generator's own check
        SynthConfig(drives=True, subset=tuple(items)).validate()
    except UsageError as exc:
        raise UsageError(f'{usage}; {exc}') from None
    return tuple(items)
