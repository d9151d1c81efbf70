#!/usr/bin/env bash
# The GPU check: on a machine with CUDA, in under 8 minutes on one GPU,
#   1. the test suite's GPU tests (tests/test_gpu.py, marked gpu),
#   2. the vae-paper recipe for a few epochs with --accelerator gpu, in 32 and bf16-mixed,
#   3. a resume of the float32 run, then its evaluation (IW, K = 1000, 2000 test images),
#   4. 64 samples from a Gated PixelCNN with the cached sampler,
#   5. the ELBO's forward and backward pass, Pyro's classes against the library's, which
#      read nothing back to the host (benchmarks/svi_overhead.py --passes, under 60 s),
#   6. AIS (T = 1000 x 8 chains) and IW (K = 1000) on 100 test images, the estimators of
#      this checkout against those before issue 19 (benchmarks/evaluation.py --speed; at
#      most 150 s, SKIP_AIS_SPEED=1 leaves it out),
# and a table of s/epoch and s/image. Figures and logs go to OUT_DIR.
#
#     benchmarks/gpu_check.sh DATA_DIR OUT_DIR
#
# DATA_DIR holds binarized_mnist.npz (the layout of pyro_genmodels.data). On a machine
# without pyro-ppl, the wheels in ./.whl are installed first. benchmarks/gpu_prepare.sh,
# run beforehand where pip works, writes .whl, .data (the data) and .baseline (the old
# estimators, for step 6 on a machine without .git); carry all three.
set -euo pipefail
DATA=${1:?usage: gpu_check.sh DATA_DIR OUT_DIR}
OUT=${2:?usage: gpu_check.sh DATA_DIR OUT_DIR}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1 PYRO_GENMODELS_DATA="$DATA" PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
if ! "$PY" -c "import pyro" 2>/dev/null && [ -d .whl ]; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl
    export PYTHONPATH="$PYTHONPATH:/tmp/site"
fi
"$PY" -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; \
print('device:', torch.cuda.get_device_name(0), '| torch', torch.__version__)" | tee "$OUT/device.txt"
CLI=("$PY" -m pyro_genmodels.cli)

echo "== 1. GPU tests" | tee -a "$OUT/summary.txt"
timeout 180 "$PY" -m pytest -q -m gpu tests/test_gpu.py -p no:cacheprovider 2>&1 \
    | tee "$OUT/tests.log" | tail -3 | tee -a "$OUT/summary.txt"

echo "== 2. vae-paper, 2 epochs of 50000 images, on the GPU" | tee -a "$OUT/summary.txt"
for precision in 32 bf16-mixed; do
    run="$OUT/vae-$precision"
    rm -rf "$run"
    timeout 150 "${CLI[@]}" train --preset vae-paper --data-dir "$DATA" --epochs 2 \
        --accelerator gpu --precision "$precision" --no-progress --out "$run" \
        > "$run.log" 2>&1 || { echo "train $precision failed"; tail -5 "$run.log"; }
done

echo "== 3. resume the float32 run to epoch 3, then evaluate it" | tee -a "$OUT/summary.txt"
timeout 90 "${CLI[@]}" train --resume --out "$OUT/vae-32" --epochs 3 --no-progress \
    > "$OUT/resume.log" 2>&1 || { echo "resume failed"; tail -5 "$OUT/resume.log"; }
timeout 90 "${CLI[@]}" evaluate "$OUT/vae-32" --num-samples 1000 --limit 2000 --no-progress \
    --json "$OUT/evaluate.json" > "$OUT/evaluate.log" 2>&1 || tail -5 "$OUT/evaluate.log"

echo "== 4. Gated PixelCNN, cached sampler" | tee -a "$OUT/summary.txt"
timeout 60 "$PY" - > "$OUT/sampling.txt" 2>&1 <<'EOF' || tail -5 "$OUT/sampling.txt"
import time, torch, pyro_genmodels as pg
model = pg.create_model("gated-pixelcnn", image_shape=(1, 28, 28), hidden_channels=64,
                        num_layers=8).to("cuda")
model.sample(2); torch.cuda.synchronize()
t = time.perf_counter(); x = model.sample(64); torch.cuda.synchronize()
print(f"gated-pixelcnn 64x8: 64 samples in {time.perf_counter() - t:.2f} s on {x.device}")
EOF

echo "== 5. the ELBO's forward + backward, Pyro's classes against the library's (no host reads)" \
    | tee -a "$OUT/summary.txt"
timeout 60 "$PY" benchmarks/svi_overhead.py --passes --device cuda > "$OUT/passes.md" 2>&1 \
    || tail -5 "$OUT/passes.md"
tail -6 "$OUT/passes.md" | tee -a "$OUT/summary.txt"

if [ -z "${SKIP_AIS_SPEED:-}" ]; then
echo "== 6. AIS and IW, old against new estimators, on the GPU" | tee -a "$OUT/summary.txt"
timeout 150 "$PY" benchmarks/evaluation.py --speed --device cuda --pretrained vae-paper \
    --limit 100 --batch 100 --ais-steps 1000 --ais-chains 8 --num-samples 1000 \
    --out "$OUT/evaluation-speed" > "$OUT/evaluation-speed.log" 2>&1 \
    || { echo "AIS speed stopped early; its running totals:"; tail -3 "$OUT/evaluation-speed.log"; }
[ -f "$OUT/evaluation-speed/table.md" ] && tee -a "$OUT/summary.txt" < "$OUT/evaluation-speed/table.md"
fi

"$PY" - "$OUT" <<'EOF' | tee -a "$OUT/summary.txt"
import json, statistics, sys
from pathlib import Path
out = Path(sys.argv[1])
print("| what | figure |\n|---|---:|")
for precision in ("32", "bf16-mixed"):
    path = out / f"vae-{precision}" / "metrics.jsonl"
    if path.exists():
        rows = [json.loads(r) for r in path.read_text().splitlines()]
        sec = statistics.median(r["seconds"] for r in rows)
        print(f"| vae-paper s/epoch, {precision} | {sec:.2f} (valid ELBO {rows[-1]['valid_elbo']:.2f}) |")
ev = out / "evaluate.json"
if ev.exists():
    r = json.loads(ev.read_text())
    print(f"| IW K=1000 s/image | {r['seconds'] / r['num_examples']:.4f} (NLL {r['nll']:.2f}) |")
s = out / "sampling.txt"
if s.exists():
    print(f"| sampling | {s.read_text().strip().splitlines()[-1]} |")
EOF
