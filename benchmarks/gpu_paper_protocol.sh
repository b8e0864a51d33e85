#!/usr/bin/env bash
# The paper's protocol on cifar10 (5 tasks of 2 classes, ResNet-32, 250 epochs and 10,000 dreaming
# iterations per task, step schedule) or as much of it as fits one command's budget on one GPU.
#
#   DATA=path/to/cifar10_jpeg.npz OUT=results-dir bash benchmarks/gpu_paper_protocol.sh
#
# The only large file that travels with the checkout is the 54 MB cifar10_jpeg.npz. What makes it fast
# is the learner's own defaults on CUDA: the task's images stay on the GPU as uint8, augmentation is
# batched on the GPU (abd_edge/data/augment.py), channels_last, bf16 autocast (precision=auto; BN
# statistics, losses and dreaming's BN terms in fp32) and torch.compile of the training forward
# (compile=auto; COMPILE=false turns it off, a compiler failure falls back to eager by itself).
#
# 1. smoke: digits, 2 tasks, on the device; stop if it breaks;
# 2. calibration: 2 tasks of the protocol at CAL_EPOCHS epochs and CAL_DREAM dreaming iterations give
#    task-1 and replay images/s and dreaming s/iteration (compilation included: a conservative estimate);
# 3. the run: epochs E and dreaming iterations 40*E (the paper's ratio, 10,000 / 250) chosen so that all
#    5 tasks fit in BUDGET seconds, E at most MAX_EPOCHS (250); milestones scale with E. A budget below
#    one such epoch gets one epoch and fewer dreaming iterations.
#
# Tested on CPU with a tiny budget: DATASET=digits DEVICE=cpu BUDGET=40 CAL_EPOCHS=1 CAL_DREAM=4 \
#   SMOKE_LIMIT=900 CAL_LIMIT=900 THREADS=1 bash benchmarks/gpu_paper_protocol.sh
set -u
DATA=${DATA:-.data/cifar10_jpeg.npz}
OUT=${OUT:-runs/gpu-paper}
DATASET=${DATASET:-cifar10}
DEVICE=${DEVICE:-cuda}
BUDGET=${BUDGET:-420}          # seconds for the whole 5-task run (the calibration and smoke come on top)
MAX_EPOCHS=${MAX_EPOCHS:-250}
CAL_EPOCHS=${CAL_EPOCHS:-2}
CAL_DREAM=${CAL_DREAM:-100}
COMPILE=${COMPILE:-auto}
PRECISION=${PRECISION:-auto}
THREADS=${THREADS:-4}
SMOKE_LIMIT=${SMOKE_LIMIT:-180}  # seconds
CAL_LIMIT=${CAL_LIMIT:-300}
PY=${PY:-python3}
export PYTHONUNBUFFERED=1
mkdir -p "$OUT"

$PY - <<'EOF'
import torch, platform
print("torch", torch.__version__, "cuda", torch.cuda.is_available(),
      torch.cuda.get_device_name(0) if torch.cuda.is_available() else "-", "python", platform.python_version())
EOF

sets=(--set "compile=$COMPILE" --set "precision=$PRECISION")
data=(--dataset "$DATASET")
[ "$DATASET" = cifar10 ] && data+=(--data-root "$DATA")
common=("${data[@]}" --tasks 5 --seed 0 --device "$DEVICE" --threads "$THREADS" --recipe paper --quiet --no-plot "${sets[@]}")

echo "== smoke"
if ! timeout "$SMOKE_LIMIT" $PY -m abd_edge bench --dataset digits --tasks 5 --max-tasks 2 --epochs 1 --dream-iters 5 \
        --device "$DEVICE" --quiet --no-plot "${sets[@]}" --out "$OUT/smoke.json" > "$OUT/smoke.log" 2>&1; then
    tail -30 "$OUT/smoke.log"; echo "SMOKE FAILED"; exit 3
fi
grep -E "^\[abd\]" "$OUT/smoke.log"
grep -i "training eagerly" "$OUT/smoke.log" | head -2

echo "== calibration: 2 tasks, $CAL_EPOCHS epochs, $CAL_DREAM dreaming iterations"
start=$(date +%s)
if ! timeout "$CAL_LIMIT" $PY -m abd_edge bench "${common[@]}" --max-tasks 2 --epochs "$CAL_EPOCHS" --dream-iters "$CAL_DREAM" \
        --out "$OUT/calibration.json" > "$OUT/calibration.log" 2>&1; then
    tail -30 "$OUT/calibration.log"; echo "CALIBRATION FAILED"; exit 4
fi
grep -E "^\[abd\]" "$OUT/calibration.log"
echo "calibration took $(( $(date +%s) - start )) s"

plan=$($PY - "$OUT/calibration.json" "$BUDGET" "$MAX_EPOCHS" <<'EOF'
import json, sys
doc = json.load(open(sys.argv[1]))
r = doc["methods"]["abd"]
budget, max_epochs = float(sys.argv[2]), int(sys.argv[3])
n = r["reports"][0]["n_images"]
t1, rep, spi = r["task1_images_per_second"], r["replay_images_per_second"], r["dream_seconds_per_iteration"]
# seconds per epoch of each task and per dreaming iteration; 4 later tasks, dreaming after tasks 1-4
train_epoch = n / t1 + 4 * n / rep
epochs = max(1, min(max_epochs, int(0.9 * budget / (train_epoch + 4 * 40 * spi))))
# below one epoch at the paper's ratio: one epoch and whatever dreaming the rest of the budget allows
dream = 40 * epochs if epochs > 1 else max(1, min(40, int((0.9 * budget - train_epoch) / (4 * spi))))
print(epochs, dream, f"{t1:.0f}", f"{rep:.0f}", f"{spi:.4f}")
EOF
)
read -r EPOCHS DREAM T1 REP SPI <<< "$plan"
echo "calibrated: task 1 $T1 img/s, replay $REP img/s, dreaming $SPI s/it -> $EPOCHS epochs, $DREAM dreaming iterations per task"

echo "== the run"
start=$(date +%s)
timeout $(( BUDGET + 120 )) $PY -m abd_edge bench "${common[@]}" --epochs "$EPOCHS" --dream-iters "$DREAM" \
    --out "$OUT/paper-protocol.json" > "$OUT/paper-protocol.log" 2>&1
rc=$?
echo "run: rc $rc in $(( $(date +%s) - start )) s ($EPOCHS epochs, $DREAM dreaming iterations per task; paper: 250 and 10000)"
grep -E "^\[abd\]|final|Error" "$OUT/paper-protocol.log" | tail -12
command -v nvidia-smi > /dev/null && nvidia-smi --query-gpu=name,memory.used,memory.total --format=csv
exit $rc
