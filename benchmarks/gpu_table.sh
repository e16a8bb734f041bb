#!/bin/bash
# The speed issue's GPU table in one command, for a session that is lent a CUDA machine:
#
#   benchmarks/gpu_table.sh PAPER_REPO OUT_DIR
#
# PAPER_REPO: a checkout of github.com/crate-lm/crate-lm (never copied into this repository);
# OUT_DIR: where the JSON records and the markdown tables go. CRATE-B and GPT-2-B, bfloat16, seq
# 1024, batch 16 (benchmarks/README.md): first ours beside the paper's eager and `torch.compile`d
# PyTorch step (`paper_side_by_side.py`, our default kernels, one round: a round compiles both
# sides of both variants again), then our step with other kernels (`train_throughput.py`, each
# `attention:head` of KERNELS; tokens/s, MFU, compile time, peak memory in both). About 8-10
# minutes on an H100-class GPU is the estimate, not a measurement: set KERNELS= (empty) to time
# only the side-by-side. SIZE, DTYPE, SEQ, BATCH, ROUNDS, STEPS, WARMUP and DEVICE override the
# defaults, so the same script is tried out on a CPU first:
#
#   SIZE=tiny DTYPE=float32 SEQ=64 BATCH=4 STEPS=2 WARMUP=1 DEVICE=cpu KERNELS=blockwise:chunked \
#       benchmarks/gpu_table.sh /path/to/crate-lm /tmp/gpu_table
set -euo pipefail

if [[ $# -ne 2 ]]; then
  echo "usage: $0 PAPER_REPO OUT_DIR" >&2
  exit 2
fi
if [[ ! -f "$1/crate_overcomplete.py" ]]; then
  echo "FATAL: $1 is not a crate-lm checkout (no crate_overcomplete.py)" >&2
  exit 2
fi
mkdir -p "$2"
paper_repo=$(cd "$1" && pwd)
out=$(cd "$2" && pwd)
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1

size=${SIZE:-b}
dtype=${DTYPE:-bfloat16}
shape=(--size="$size" --dtype="$dtype" --seq_len="${SEQ:-1024}" --batch_size="${BATCH:-16}"
       --steps="${STEPS:-20}" --warmup="${WARMUP:-3}")

nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>/dev/null \
  > "$out/device.txt" || echo "no nvidia-smi" > "$out/device.txt"
python benchmarks/paper_side_by_side.py --paper_repo="$paper_repo" --variants=crate,gpt2 \
  "${shape[@]}" --rounds="${ROUNDS:-1}" --torch_device="${DEVICE:-cuda}" --torch_compile \
  | tee "$out/side_by_side.md"
for kernels in ${KERNELS-auto:chunked xla:logits}; do
  attention=${kernels%%:*}
  head=${kernels##*:}
  python benchmarks/train_throughput.py --variants=crate,gpt2 "${shape[@]}" \
    --attention_impl="$attention" --head_impl="$head" \
    --json_out="$out/throughput_${attention}_${head}.json" | tee "$out/throughput_${attention}_${head}.md"
done
