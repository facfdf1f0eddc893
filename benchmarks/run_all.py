"""Run every benchmark in this folder (modules named bench_*.py, each with a ``main(argv)``); `make bench`."""
import importlib
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
            importlib.import_module(f'benchmarks.{name}').main([])
        except Exception as exc:  # report and go on with the others
            print(f'{name} failed: {exc!r}', file=sys.stderr)
            failed.append(name)
    return 1 if failed else 0


if __name__ == '__main__':
    sys.exit(main())
