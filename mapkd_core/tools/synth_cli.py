"""``mapkd-synth``: the synthetic dataset generator's command line (``mapkd_core.data.synth.generate.main``) under
the one error handler of every mapkd command (``mapkd_core.cli``: one line on stderr and exit code 2 for bad input,
``--debug`` for the traceback). It lives outside ``data/synth/`` because the generated datasets are keyed by a
digest of that folder's code: a command-line change must not invalidate them."""
from __future__ import annotations

from ..cli import command
from ..data.synth.generate import main as _generate_main

main = command('mapkd-synth')(_generate_main)

if __name__ == '__main__':
    raise SystemExit(main())
