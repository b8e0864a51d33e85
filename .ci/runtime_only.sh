#!/usr/bin/env bash
# A device install: the base package (numpy + onnxruntime, no torch) opens a bundle made by the
# full test venv, predicts, lists history, rolls back, and `abd-edge info` describes it.
set -euo pipefail
cd "$(dirname "$0")/.."
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
.venv/bin/python .ci/make_bundle.py "$WORK"
python3 -m venv "$WORK/rt"
"$WORK/rt/bin/pip" install -q .
"$WORK/rt/bin/python" -c "import importlib.util as u, sys; sys.exit('torch is installed' if u.find_spec('torch') else 0)"
"$WORK/rt/bin/python" .ci/runtime_check.py "$WORK"
"$WORK/rt/bin/abd-edge" info "$WORK/bundle" > "$WORK/info.json"
"$WORK/rt/bin/python" -c "import json, sys; d = json.load(open(sys.argv[1])); assert d['current_version'] == 'v000001' and len(d['versions']) == 2, d; print('abd-edge info OK:', d['current_version'], [c['name'] for c in d['current']['classes']])" "$WORK/info.json"
echo "runtime-only venv: $(du -sm "$WORK/rt" | cut -f1) MB"
