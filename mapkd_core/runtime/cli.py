"""``mapkd-export``: export a student to ONNX (checked with onnx.checker), optionally build its TensorRT engine.

    mapkd-export --weights runs/student_edge/student_edge.safetensors --out student_edge.onnx [--verify]
    mapkd-export --weights W.safetensors --out W.onnx --engine --fp16 --build-only     # on the GPU machine
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..cli import add_debug_flag, command


@command('mapkd-export')
def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog='mapkd-export', description=__doc__.split('\n')[0])
    p.add_argument('--weights', required=True, help='the .safetensors model file')
    p.add_argument('--out', default=None, help='ONNX path (default: next to the weights, .onnx)')
    p.add_argument('--opset', type=int, default=17)
    p.add_argument('--verify', action='store_true', help='compare onnxruntime with torch on random inputs')
    p.add_argument('--engine', action='store_true', help='also build the TensorRT engine (needs a GPU)')
    p.add_argument('--fp16', action='store_true', help='TensorRT FP16 engine')
    p.add_argument('--build-only', action='store_true', help='build the engine and exit')
    p.add_argument('--engine-cache', default=None, help='engine cache folder (default ~/.cache/mapkd/engines)')
    add_debug_flag(p)
    args = p.parse_args(argv)

    from ..models.io import load_model
    from .backends import TensorRTBackend
    from .export import export_onnx

    weights = Path(args.weights)
    out = Path(args.out) if args.out else weights.with_suffix('.onnx')
    model = load_model(weights).eval()
    export_onnx(model, out, weights, args.opset)
    print(f'wrote {out} ({out.stat().st_size / 1e6:.1f} MB, opset {args.opset}, checked with onnx.checker)')
    if args.verify:
        import numpy as np
        import torch

        from .backends import OnnxRuntimeBackend
        from .export import example_inputs
        gen = torch.Generator().manual_seed(0)
        images, k, t = example_inputs(model.cfg)
        inputs = {'images': torch.randn(images.shape, generator=gen).numpy(), 'intrinsics': k.numpy(),
                  'cam_to_ego': t.numpy()}
        with torch.no_grad():
            ref = [x.numpy() for x in model(**{k_: torch.from_numpy(v) for k_, v in inputs.items()}).heads()]
        got = OnnxRuntimeBackend(out).run(inputs)
        rel = max(float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-12)) for a, b in zip(got, ref))
        print(f'onnxruntime vs torch: max relative difference {rel:.2e}')
    if args.engine:
        backend = TensorRTBackend(out, fp16=args.fp16, cache_dir=args.engine_cache, build_only=args.build_only)
        print(f'TensorRT engine: {backend.engine_path}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
