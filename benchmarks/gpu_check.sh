#!/usr/bin/env bash
# Every CUDA path and GPU figure the issues ask for, in one run (a lent GPU's time is minutes).
# Usage, from the repository root on a machine with torch + CUDA (the project's venv, or the
# device machine's own torch):  bash benchmarks/gpu_check.sh [OUT_DIR]
# Writes one JSON per figure and a log to OUT_DIR (default: $OUT or ./gpu-check).
set -uo pipefail
out=${1:-${OUT:-gpu-check}}
mkdir -p "$out"
py=${PYTHON:-python3}
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || true
  $py -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name(0))"
  # 1. stage 2 exactness on CUDA (the marked test) and the 158K x 1536 x 25K figure (goal <= 3 s)
  $py -m pytest -q -m gpu tests/selection/test_greedy.py -p no:cacheprovider
  $py -m benchmarks.bench_select --device cuda --features gaussian --ref-picks 1000 --fp32-loop-picks 0 --json "$out/select_cuda_gaussian.json"
  $py -m benchmarks.bench_select --device cuda --features clusters --ref-picks 200 --fp32-loop-picks 0 --json "$out/select_cuda_clusters.json"
  # 2. feature extraction: ViT-L/14-shaped CLIP, batched bf16 vs one image at a time fp32
  $py -m benchmarks.bench_features --device cuda --models l14 --n-images 4096 --n-reference 128 --batch-size 512 --num-workers 8 --json "$out/features_cuda_l14.json"
  # 3. stage-1 step overhead on a 1.1B-shaped LM + CLIP-L/14-336, bf16
  $py -m benchmarks.bench_stage1 --preset 1b --device cuda --dtype bfloat16 --batch 8 --reps 20
} 2>&1 | tee "$out/gpu_check.log"
