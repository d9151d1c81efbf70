#!/usr/bin/env bash
# Train a recipe on a GPU for at most MINUTES, then score its best checkpoint on the test set.
#
#     benchmarks/gpu_recipe.sh DATA_DIR OUT_DIR PRESET [MINUTES=8] [EVAL_IMAGES=2000]
#
# DATA_DIR holds binarized_mnist.npz; OUT_DIR/run is the run directory (checkpoint.pt,
# best.pt, metrics.jsonl): a second call with the same OUT_DIR resumes it, here or, after
# copying OUT_DIR/run back, on any machine (`train --resume --out RUN`). Training runs under
# bf16-mixed (validation in float32) and stops at the time limit as after Ctrl-C: the last
# complete epoch is kept. The evaluation is exact for a pixel model (all test images) and
# importance-weighted with K = 1000 on a fixed random subset of EVAL_IMAGES test images
# otherwise (evaluate --subset).
# Wheels and data for a machine without network or pyro-ppl: benchmarks/gpu_prepare.sh.
# To continue a run trained elsewhere (a CPU run), copy its directory to OUT_DIR/run first,
# e.g. `cp -r runs/pixelvae-mnist .gpurun/run` (.gpurun is git-ignored: carry it), and copy
# OUT_DIR/run back afterwards.
set -uo pipefail
DATA=${1:?usage: gpu_recipe.sh DATA_DIR OUT_DIR PRESET [MINUTES] [EVAL_IMAGES]}
OUT=${2:?usage}
PRESET=${3:?usage}
MINUTES=${4:-8}
EVAL_IMAGES=${5:-2000}
PY=${PYTHON:-python3}
ACCEL=${ACCEL:-gpu}  # ACCEL=cpu DEVICE=cpu: a dry run on a machine without one
DEVICE=${DEVICE:-cuda}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
if ! "$PY" -c "import pyro" 2>/dev/null && [ -d .whl ]; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl && export PYTHONPATH="$PYTHONPATH:/tmp/site"
fi
CLI=("$PY" -m pyro_genmodels.cli)
RUN="$OUT/run"
if [ -f "$RUN/checkpoint.pt" ]; then
    ARGS=(--resume --out "$RUN" --data-dir "$DATA" --accelerator "$ACCEL")
else
    ARGS=(--preset "$PRESET" --data-dir "$DATA" --out "$RUN" --accelerator "$ACCEL"
          --precision bf16-mixed)
fi
start=$(date +%s)
timeout -s INT "$((MINUTES * 60))" "${CLI[@]}" train "${ARGS[@]}" --no-progress \
    >> "$OUT/train.log" 2>&1
echo "train exited $? after $(($(date +%s) - start)) s" | tee -a "$OUT/train.log"
tail -5 "$OUT/train.log"
[ -f "$RUN/checkpoint.pt" ] || { echo "no complete epoch"; exit 1; }
MODEL=$("$PY" -c "import sys; from pyro_genmodels.infer import load_checkpoint; \
print(load_checkpoint(sys.argv[1])['metadata']['model'])" "$RUN/checkpoint.pt")
case "$MODEL" in
    pixelcnn|gated-pixelcnn|pixelrnn|diagonal-bilstm) EVAL=(--num-samples 1) ;;  # exact
    *) EVAL=(--num-samples 1000 --subset "$EVAL_IMAGES") ;;
esac
"${CLI[@]}" evaluate "$RUN" "${EVAL[@]}" --data-dir "$DATA" --device "$DEVICE" --no-progress \
    --json "$OUT/evaluate.json" 2>&1 | tee "$OUT/evaluate.log"
