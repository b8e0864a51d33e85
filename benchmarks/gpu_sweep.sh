#!/usr/bin/env bash
# Short-recipe variants of ABD on cifar10-5x2, side by side on one CUDA GPU.
# Each line of VARIANTS is "name --set k=v [--set k=v ...]".
#   DATA=... OUT=... bash benchmarks/gpu_sweep.sh
set -u
DATA=${DATA:-.data/cifar10_jpeg.npz}
OUT=${OUT:-runs/sweep}
LIMIT=${LIMIT:-360}
RES=$(mktemp -d)
export PYTHONUNBUFFERED=1
mkdir -p "$OUT"
VARIANTS=${VARIANTS:-"seed1 --set seed=1
seed2 --set seed=2
wa_off --set head_balance=none
lr05 --set later_tasks.lr=0.05
lr05_wa_off --set later_tasks.lr=0.05 --set head_balance=none
lr01 --set later_tasks.lr=0.01
warmup2 --set later_tasks.warmup_epochs=2
dreamlr5e-3 --set dream.lr=0.005"}
common=(--dataset cifar10 --data-root "$DATA" --tasks 5 --seed 0 --device cuda --threads 2 --quiet --no-plot --method abd)
start=$(date +%s)
while read -r name rest; do
    [ -z "$name" ] && continue
    # shellcheck disable=SC2086
    timeout "$LIMIT" python3 -m abd_edge bench "${common[@]}" $rest --out "$RES/sweep-$name.json" > "$RES/$name.log" 2>&1 &
done <<< "$VARIANTS"
wait
echo "sweep done in $(( $(date +%s) - start )) s"
for f in "$RES"/*.log; do echo "== $(basename "$f")"; grep -E "^\[abd\]|^T4|Error|error" "$f" | tail -7; done
tar -C "$RES" -czf "$OUT/sweep.tgz" .
