#!/usr/bin/env bash
# Sets up .venv with everything jielong needs. Idempotent: a second run with an
# unchanged pyproject.toml returns in a second.
#
# Torch comes first, because a plain `pip install torch` on Linux pulls a CUDA
# build of several GB. On a CPU machine we take the CPU build (the one this
# project's machines carry as torch==2.13.0). A GPU user sets TORCH_SPEC, e.g.
#   TORCH_SPEC="torch" bash setup.sh                 # the CUDA build from PyPI
#   TORCH_SPEC="torch==2.13.0" TORCH_INDEX_URL=<your CUDA wheel index> bash setup.sh
set -euo pipefail
cd "$(dirname "$0")"
PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
# shellcheck disable=SC1091
. .venv/bin/activate

stamp=.venv/.jielong-installed
want=$(cat pyproject.toml setup.sh | python -c 'import hashlib,sys; print(hashlib.sha256(sys.stdin.buffer.read()).hexdigest())')
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi

python -m pip install -q --upgrade pip
if ! python -c "import torch" 2>/dev/null; then
  TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
  echo "setup: installing $TORCH_SPEC"
  if [ -n "${TORCH_INDEX_URL:-}" ]; then
    python -m pip install -q "$TORCH_SPEC" --index-url "$TORCH_INDEX_URL"
  else
    python -m pip install -q "$TORCH_SPEC"
  fi
fi
echo "setup: installing jielong and its dependencies"
python -m pip install -q -e ".[dev]"
echo "$want" > "$stamp"
echo "setup: done ($(python -c 'import torch; print("torch", torch.__version__)'))"
