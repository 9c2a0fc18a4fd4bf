#!/usr/bin/env bash
# The GPU check (benchmarks/gpu_check.py): tests/test_cuda.py, mask time fp32/bf16 with the mask
# IoU, enforcement overhead, exported latency and loader throughput, in under 10 minutes on one
# CUDA GPU; a dry run on tiny sizes without one. Run from anywhere; results go to --out
# (default: $OUT if set, else ./gpu_check_out).
#
#   bash benchmarks/gpu_check.sh [--dry-run] [--out DIR] [--parts ...] [--time-limit S]
#
# Uses $PYTHON, else the repository's .venv, else python3. Torch-Pruning (the export part) can
# travel as a wheel: any *.whl in the repository's .whl/ is installed into a scratch folder first.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
python="${PYTHON:-}"
if [[ -z "$python" ]]; then
    if [[ -x "$root/.venv/bin/python" ]]; then python="$root/.venv/bin/python"; else python=python3; fi
fi
if compgen -G "$root/.whl/*.whl" >/dev/null; then
    site="$(mktemp -d)"
    "$python" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
        --target "$site" "$root"/.whl/*.whl
    export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}"
export GPU_CHECK_COMMAND="bash benchmarks/gpu_check.sh${*:+ $*}"
cd "$root"
exec "$python" benchmarks/gpu_check.py "$@"
