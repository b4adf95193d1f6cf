#!/usr/bin/env bash
# One prepared GPU check (CUDA, bf16, batch 1): time-to-first-token speed-up of every
# registered strategy at 33.3 / 22.2 / 11.1% of 576 visual tokens, on LLaVA-1.5-7B and
# Qwen2.5-VL-7B architectures built from tokenbench/model_configs/*.json with random
# weights (latency does not depend on weight values). Finishes in under 8 minutes; the
# table goes to $OUT/gpu_speedup.md when $OUT is set (else benchmarks/gpu_speedup.md),
# and is rewritten after each model, so a time limit loses only the model in progress.
#
#   bash benchmarks/gpu.sh                 # both models
#   bash benchmarks/gpu.sh --models llava-1.5-7b --repeats 2
#
# A CPU smoke test of the same code: bash benchmarks/gpu.sh --tiny
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
TABLE=${OUT:+$OUT/gpu_speedup.md}
TABLE=${TABLE:-benchmarks/gpu_speedup.md}

if ! "$PY" -c "import tokenbench.adapters.llava" 2>/dev/null; then
    echo "gpu.sh: installing tokenbench (editable, no dependencies) into $("$PY" -c 'import sys; print(sys.prefix)')" >&2
    "$PY" -m pip install --quiet --no-deps --no-build-isolation -e . >&2
fi
if [[ "${1:-}" == "--tiny" ]]; then  # the same code end to end on a CPU, shrunken models, in about a minute (CI runs it)
    shift
    exec "$PY" benchmarks/gpu_speedup.py --device cpu --tiny --dtype float32 --samples 1 --repeats 1 --warmup 2 \
        --strategies baseline,fastv,sparsevlm,pdrop,visionzip --batches 1,8 --time-budget 60 --output "$TABLE" "$@"
fi
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv,noheader >&2 || true
"$PY" -c "import torch, transformers; assert torch.cuda.is_available(), 'no CUDA device'; print('torch', torch.__version__, 'CUDA', torch.version.cuda, 'transformers', transformers.__version__)" >&2

# 460 s hard limit (< 8 min including start-up); the script itself needs about 4-6 min on an H100/H200.
timeout --signal=INT --kill-after=15 460 "$PY" benchmarks/gpu_speedup.py \
    --device cuda --dtype bfloat16 --samples 3 --repeats 4 --warmup 3 --new-tokens 8 \
    --output "$TABLE" "$@"
echo "gpu.sh: table in $TABLE" >&2
