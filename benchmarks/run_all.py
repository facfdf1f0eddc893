"""Run every benchmark in this folder (modules named bench_*.py, each with a ``main(argv)``); `make bench`.

Benchmarks that set ``LONG = True`` (the training ablation, about an hour on a 2-core CPU) run only with
``BENCH_ALL=1``.
"""
import importlib
import os
import pkgutil
import sys
from pathlib import Path


def main() -> int:
    here = Path(__file__).resolve().parent
    names = sorted(m.name for m in pkgutil.iter_modules([str(here)]) if m.name.startswith('bench_'))
    failed = []
    for name in names:
        print(f'== {name}', flush=True)
        try:
            module = importlib.import_module(f'benchmarks.{name}')
            if getattr(module, 'LONG', False) and os.environ.get('BENCH_ALL') != '1':
                print(f'{name}: skipped (long; set BENCH_ALL=1 to run it)')
                continue
            module.main([])
        except Exception as exc:  # report and go on with the others
            print(f'{name} failed: {exc!r}', file=sys.stderr)
            failed.append(name)
    return 1 if failed else 0


if __name__ == '__main__':
    sys.exit(main())
