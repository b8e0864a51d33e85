#!/usr/bin/env bash
# Everything a borrowed GPU is for, as one command that fits its limits (one command under 10 minutes;
# only the checkout travels, so the one large file is cifar10_jpeg.npz in a git-ignored folder):
#
#   python3 -m pip install --no-deps --no-build-isolation -e . -q
#   DATA=.data/cifar10_jpeg.npz OUT=$OUT DEADLINE=540 bash benchmarks/gpu_paper_protocol.sh
#
# 1. smoke: digits, 2 tasks, on the device, eager; stop if it breaks;
# 2. the probe (benchmarks/gpu_step_probe.py): a bare ResNet-32 step eager and captured whole in one CUDA graph
#    (the ceiling), steady-state task-1 images/s of each engine variant (fp32,
#    bf16, compiled, compiled with CUDA graphs) from the engine's per-epoch log lines, every host-device
#    synchronisation of one epoch, GPU-kernel time against wall time, then dreaming and replay training of
#    task 2 in the fastest variant, at steady state (compilation and graph recording are warm-up there);
# 3. the profile (abd_edge/apps/profiling.py): the plain DataLoader+PIL loop against the engine, task 1;
# 4. the paper's protocol on cifar10 (5 tasks of 2 classes, ResNet-32, step schedule; the paper: 250 epochs and
#    10,000 dreaming iterations per task) at as many epochs E as fit what is left of DEADLINE, with 40*E dreaming
#    iterations (the paper's ratio) and milestones scaled to E, in the probe's fastest variant.
#
# What makes the engine fast on CUDA are the learner's own defaults: the task's images stay on the GPU as
# uint8, augmentation is batched there (abd_edge/data/augment.py), channels_last, bf16 autocast (BN statistics,
# losses and dreaming's BN terms in fp32) and torch.compile (compile="auto") of the training forward, the
# teacher, the replay draw and the dreaming step; a compiler failure falls back to eager by itself.
#
# Tested on CPU with a tiny budget:
#   DEVICE=cpu DATA=.data/cifar10_jpeg.npz DEADLINE=400 PROBE_VARIANTS=bf16,bf16_compile THREADS=2 BARE_STEPS=2 \
#     PROBE_ARGS="--images 512 --epochs 2 --later-epochs 2 --dream-iters 3" PROFILE_ARGS="--images 512 --seconds 3 \
#     --rounds 1" PY=.venv/bin/python PROTOCOL_IMAGES=fast bash benchmarks/gpu_paper_protocol.sh
set -u
T0=$(date +%s)
DATA=${DATA:-.data/cifar10_jpeg.npz}
OUT=${OUT:-runs/gpu-paper}
DEVICE=${DEVICE:-cuda}
DEADLINE=${DEADLINE:-540}         # seconds for the whole script, start to end
MAX_EPOCHS=${MAX_EPOCHS:-250}
THREADS=${THREADS:-4}
PROBE_VARIANTS=${PROBE_VARIANTS:-fp32,bf16,bf16_compile,bf16_cudagraphs}
PROBE_ARGS=${PROBE_ARGS:---epochs 5 --later-epochs 3 --dream-iters 100}
PROBE_LIMIT=${PROBE_LIMIT:-200}
BARE_STEPS=${BARE_STEPS:-60}      # bare ResNet-32 steps timed eager and in one CUDA graph (the ceiling); 0: skip
PROFILE_VARIANTS=${PROFILE_VARIANTS:-fp32,bf16}
PROFILE_ARGS=${PROFILE_ARGS:---seconds 8 --rounds 1}
PROFILE_LIMIT=${PROFILE_LIMIT:-60}
PROTOCOL_IMAGES=${PROTOCOL_IMAGES:-}  # "fast": a CPU test plans for 1 epoch and stops at the deadline
PY=${PY:-python3}
export PYTHONUNBUFFERED=1
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"  # benchmarks/*.py import abd_edge from the checkout
mkdir -p "$OUT"
left() { echo $(( DEADLINE - ($(date +%s) - T0) )); }

$PY - <<'EOF' | tee "$OUT/environment.txt"
import platform, torch
print("torch", torch.__version__, "cuda", torch.cuda.is_available(),
      torch.cuda.get_device_name(0) if torch.cuda.is_available() else "-", "python", platform.python_version())
EOF
command -v nvidia-smi > /dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee -a "$OUT/environment.txt"

echo "== smoke ($(left) s left)"
if ! timeout 120 $PY -m abd_edge bench --dataset digits --tasks 5 --max-tasks 2 --epochs 1 --dream-iters 5 \
        --device "$DEVICE" --quiet --no-plot --set compile=false --out "$OUT/smoke.json" > "$OUT/smoke.log" 2>&1; then
    tail -30 "$OUT/smoke.log"; echo "SMOKE FAILED"; exit 3
fi
grep -E "^\[abd\]" "$OUT/smoke.log"

echo "== probe: steady-state epochs, synchronisations, replay, dreaming ($(left) s left)"
# shellcheck disable=SC2086
timeout "$PROBE_LIMIT" $PY benchmarks/gpu_step_probe.py --data "$DATA" --device "$DEVICE" --threads "$THREADS" \
    --variants "$PROBE_VARIANTS" --bare-steps "$BARE_STEPS" $PROBE_ARGS --out "$OUT/probe.json" > "$OUT/probe.log" 2>&1
echo "probe: rc $?"
grep -E "^(bare step|task 1|sync|  +[0-9]+x|one profiled|  top|dreaming|replay|wrote)" "$OUT/probe.log" | cut -c1-300

echo "== profile: the plain DataLoader+PIL loop against the engine ($(left) s left)"
# shellcheck disable=SC2086
timeout "$PROFILE_LIMIT" $PY -m abd_edge.apps.profiling --data "$DATA" --device "$DEVICE" --threads "$THREADS" \
    --variants "$PROFILE_VARIANTS" --replay-variants "" $PROFILE_ARGS --out "$OUT/profile.json" > "$OUT/profile.log" 2>&1
echo "profile: rc $?"
grep -E "^(loop|plain|engine|warm-up)" "$OUT/profile.log"

# the plan: the probe's fastest variant and its steady-state speeds (fallbacks without a probe)
plan=$($PY - "$OUT/probe.json" "$(left)" "$MAX_EPOCHS" "$PROTOCOL_IMAGES" <<'EOF'
import json, os, sys
from abd_edge.apps.profiling import VARIANTS
# 120 s kept for what the plan cannot see: compiling each task's new graphs, loading, evaluating after each task
budget, max_epochs, fast = float(sys.argv[2]) - 120, int(sys.argv[3]), sys.argv[4] == "fast"
t1, rep, spi, best = 5000.0, 3000.0, 0.03, "bf16_compile"
if os.path.exists(sys.argv[1]):
    doc = json.load(open(sys.argv[1]))  # a probe stopped by its limit leaves the stages it finished
    rates = {k: v["steady_images_per_second"] or 0 for k, v in doc.get("task1", {}).items()}
    best = doc.get("best") or (max(rates, key=rates.get) if rates else best)
    t1 = rates.get(best) or t1
    rep = (doc.get("replay") or {}).get("steady_images_per_second") or rep
    spi = (doc.get("dreaming") or {}).get("seconds_per_iteration") or spi
n = 10000
train_epoch = n / t1 + 4 * n / rep          # task 1, then 4 tasks with replay
epochs = 1 if fast else max(1, min(max_epochs, int(0.9 * budget / (train_epoch + 4 * 40 * spi))))
dream = 40 * epochs if not fast else 4
v = VARIANTS[best]
sets = (f"compile={str(bool(v.get('compile', False))).lower()} compile_mode={v.get('compile_mode') or 'default'} "
        f"cuda_deterministic={str(v.get('cuda_deterministic', True)).lower()} precision={v['precision']}")
print(epochs, dream, best, f"{t1:.0f}", f"{rep:.0f}", f"{spi:.4f}", sets)
EOF
)
read -r EPOCHS DREAM BEST T1 REP SPI SETS <<< "$plan"
echo "plan: $BEST ($T1 img/s in task 1), replay $REP img/s, dreaming $SPI s/it -> $EPOCHS epochs, $DREAM dreaming iterations per task ($(left) s left)"
sets=()
for s in $SETS; do sets+=(--set "$s"); done

echo "== the paper's protocol"
start=$(date +%s)
budget=$(( $(left) - 15 ))
timeout "$budget" $PY -m abd_edge bench --dataset cifar10 --data-root "$DATA" --tasks 5 --seed 0 --device "$DEVICE" \
    --threads "$THREADS" --recipe paper --epochs "$EPOCHS" --dream-iters "$DREAM" --quiet --no-plot "${sets[@]}" \
    --out "$OUT/paper-protocol.json" > "$OUT/paper-protocol.log" 2>&1
rc=$?
echo "protocol: rc $rc in $(( $(date +%s) - start )) s ($EPOCHS epochs, $DREAM dreaming iterations per task; paper: 250 and 10000)"
grep -E "^\[abd\]|final|average|Error|eagerly" "$OUT/paper-protocol.log" | tail -14
command -v nvidia-smi > /dev/null && nvidia-smi --query-gpu=memory.used,memory.total --format=csv
echo "total $(( $(date +%s) - T0 )) s"
exit $rc
