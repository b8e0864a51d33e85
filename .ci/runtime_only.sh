#!/usr/bin/env bash
# A device install: the base package (numpy + onnxruntime, no torch) opens a bundle made by the
# full test venv, predicts, lists history, rolls back, and `abd-edge info` describes it; then the
# same with the oldest ONNX Runtime the package admits.
set -euo pipefail
cd "$(dirname "$0")/.."
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
.venv/bin/python .ci/make_bundle.py "$WORK"
cp -a "$WORK/bundle" "$WORK/pristine"   # the check rolls back; the second run starts from the same state
python3 -m venv "$WORK/rt"
"$WORK/rt/bin/pip" install -q .
"$WORK/rt/bin/python" -c "import importlib.util as u, sys; sys.exit('torch is installed' if u.find_spec('torch') else 0)"
"$WORK/rt/bin/python" .ci/runtime_check.py "$WORK"
"$WORK/rt/bin/abd-edge" info "$WORK/bundle" > "$WORK/info.json"
"$WORK/rt/bin/python" -c "import json, sys; d = json.load(open(sys.argv[1])); assert d['current_version'] == 'v000001' and len(d['versions']) == 2, d; print('abd-edge info OK:', d['current_version'], [c['name'] for c in d['current']['classes']])" "$WORK/info.json"
echo "runtime-only venv: $(du -sm "$WORK/rt" | cut -f1) MB"
# The oldest ONNX Runtime the package admits (onnxruntime>=1.15; 1.15.1 is the oldest with Python 3.11 wheels,
# built against numpy 1.x) reads the same bundle.
"$WORK/rt/bin/pip" install -q "onnxruntime==1.15.1" "numpy<2"
rm -rf "$WORK/bundle" && cp -a "$WORK/pristine" "$WORK/bundle"
"$WORK/rt/bin/python" .ci/runtime_check.py "$WORK"
