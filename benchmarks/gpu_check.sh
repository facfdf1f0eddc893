#!/usr/bin/env bash
# GPU check (one command, at most 8 minutes): edge / paper student latency at batch 1 in fp32 / fp16 on torch CUDA
# (eager and CUDA graphs, outputs against the CPU run) and paper-size training steps/s of the teacher and the student.
# Runs on the machine's own Python (torch with CUDA); mapkd_core is imported from this checkout (PYTHONPATH), not
# installed. Writes gpu_check.json to $OUT when set, else benchmarks/results/. Without a GPU: one line, exit 0.
#
#   bash benchmarks/gpu_check.sh                 # PYTHON=/path/to/python to choose the interpreter
#   MAPKD_WHEELS=dir bash benchmarks/gpu_check.sh  # wheels (pyyaml, safetensors) to install when they are missing
set -u
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO" || exit 1
PY="${PYTHON:-$(command -v python3 || command -v python)}"
if [ -z "$PY" ]; then
  echo "gpu_check: no python3 on PATH (set PYTHON=/path/to/python)"; exit 1
fi
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONDONTWRITEBYTECODE=1

# small pure dependencies: install from carried wheels when they are missing (never from the network), GPU only
missing=""
if [ -e /dev/nvidia0 ] || command -v nvidia-smi >/dev/null 2>&1; then
missing=$("$PY" - <<'PYEOF'
import importlib.util
print(' '.join(pkg for mod, pkg in (('yaml', 'pyyaml'), ('safetensors', 'safetensors'))
               if importlib.util.find_spec(mod) is None))
PYEOF
)
fi
if [ -n "$missing" ]; then
  wheels="${MAPKD_WHEELS:-$REPO/shared/wheels}"
  if [ -d "$wheels" ]; then
    echo "gpu_check: installing $missing from $wheels"
    "$PY" -m pip install --quiet --no-index --find-links "$wheels" $missing \
      || echo "gpu_check: could not install $missing from $wheels (the check says below what stops it)"
  else
    echo "gpu_check: $missing not installed and no wheel folder ($wheels): set MAPKD_WHEELS or pip install $missing"
  fi
fi

# at most 8 minutes: the module keeps to its budget (420 s), the timeout is the backstop
timeout --kill-after=10 480 "$PY" -m benchmarks.gpu_check --budget-s "${GPU_CHECK_BUDGET_S:-420}" "$@"
rc=$?
if [ $rc -eq 124 ] || [ $rc -eq 137 ]; then
  echo "gpu_check: stopped after 8 minutes; the JSON holds what was measured until then"
fi
exit $rc
