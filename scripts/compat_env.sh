#!/usr/bin/env bash
# Make (once) the export environment of the compatibility matrix and export its models (once per
# requirements and export script); print the folder that holds them. Both are cached under
# ${XAI_GRAPH_CACHE:-~/.cache/xai-graph}, keyed by the hash of what made them, so a rerun costs seconds.
# The light test environment is not touched: torch 2.14 + torchvision + timm/transformers/ultralytics
# (about 6 GB) live in their own venv.
set -euo pipefail
cd "$(dirname "$0")/.."
cache="${XAI_GRAPH_CACHE:-$HOME/.cache/xai-graph}"
requirements=$(cat scripts/compat-requirements*.txt | sha256sum | cut -c1-12)
exports=$(cat scripts/compat-requirements*.txt scripts/compat_export.py | sha256sum | cut -c1-12)
venv="$cache/export-venv-$requirements"
models="$cache/compat-$exports"
if [ ! -x "$venv/.ready" ]; then
    rm -rf "$venv"
    python3 -m venv "$venv" >&2
    "$venv/bin/pip" install -q -r scripts/compat-requirements.txt >&2
    "$venv/bin/pip" install -q --no-deps -r scripts/compat-requirements-nodeps.txt >&2
    printf '#!/bin/sh\n' > "$venv/.ready" && chmod +x "$venv/.ready"
fi
if [ ! -f "$models/.complete" ]; then
    "$venv/bin/python" scripts/compat_export.py --out "$models" >&2
    touch "$models/.complete"
fi
echo "$models"
