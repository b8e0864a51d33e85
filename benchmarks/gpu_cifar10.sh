#!/usr/bin/env bash
# cifar10-5x2 on one CUDA GPU: every method, the joint upper bound and ABD with
# the compact generator, run side by side (one process each, sharing the GPU).
#
#   DATA=path/to/cifar10_jpeg.npz OUT=results-dir bash benchmarks/gpu_cifar10.sh
#
# Each process's seconds include the others' contention for the one GPU, so
# they are upper bounds on what a run alone takes. The final ABD learner is
# saved without the generator's Adam state (so it is small enough to copy
# back) and packed into OUT/results.tar.* with the JSONs and logs.
set -u
DATA=${DATA:-.data/cifar10_jpeg.npz}
OUT=${OUT:-runs/gpu}
LIMIT=${LIMIT:-420}   # seconds any one benchmark process may run
RES=$(mktemp -d)
export PYTHONUNBUFFERED=1
mkdir -p "$OUT"

python3 - <<'EOF'
import torch, platform
print("torch", torch.__version__, "cuda", torch.cuda.is_available(),
      torch.cuda.get_device_name(0) if torch.cuda.is_available() else "-", "python", platform.python_version())
EOF

# smoke: the whole pipeline on CUDA in seconds; stop here if it breaks
if ! timeout 120 python3 -m abd_edge bench --dataset digits --tasks 2 --epochs 1 --dream-iters 5 --device cuda \
        --quiet --no-plot --out "$RES/smoke.json" > "$RES/smoke.log" 2>&1; then
    cat "$RES/smoke.log"; echo "SMOKE FAILED"; exit 3
fi
tail -3 "$RES/smoke.log"

common=(--dataset cifar10 --data-root "$DATA" --tasks 5 --seed 0 --device cuda --threads 2 --quiet --no-plot)
start=$(date +%s)
for m in abd deepinversion lwf lwf_mc finetune upper_bound; do
    extra=()
    [ "$m" = abd ] && extra=(--save-learner "$RES/learner-abd")
    timeout "$LIMIT" python3 -m abd_edge bench "${common[@]}" --method "$m" "${extra[@]}" \
        --out "$RES/cifar10-5x2-$m.json" > "$RES/$m.log" 2>&1 &
done
timeout "$LIMIT" python3 -m abd_edge bench "${common[@]}" --method abd --generator abd_compact \
    --out "$RES/cifar10-5x2-abd_compact.json" > "$RES/abd_compact.log" 2>&1 &
wait
echo "all benchmark processes done in $(( $(date +%s) - start )) s"
for f in "$RES"/*.log; do echo "== $f"; grep -v "^\s*$" "$f" | tail -8; done
nvidia-smi --query-gpu=name,memory.used,memory.total --format=csv || true

if [ -d "$RES/learner-abd" ]; then
    python3 - "$RES/learner-abd" "$RES/learner-abd-small" <<'EOF'
import dataclasses, sys
from abd_edge import Learner
l = Learner.load(sys.argv[1], device="cpu")
l.reconfigure(dream=dataclasses.replace(l.config.dream, keep_optimizer=False))
l.save(sys.argv[2])
EOF
    rm -rf "$RES/learner-abd"
fi
tar -C "$RES" -cf "$OUT/results.tar" . && (cd "$OUT" && split -b 15m results.tar results.tar. && rm results.tar)
ls -la "$OUT"
