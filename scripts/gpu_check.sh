#!/usr/bin/env bash
# The GPU acceptance points in one go, for a machine with a CUDA build of PyTorch and transformers
# already installed (no registry needed): CUDA parity tests, decode speed vs transformers (dynamic and
# static cache), training throughput/MFU, a short real-text pretraining run, and the FSDP path.
#   bash scripts/gpu_check.sh [OUT_DIR]      # figures and logs land in OUT_DIR (default bench_out/gpu)
set -uo pipefail
cd "$(dirname "$0")/.."
out="${1:-bench_out/gpu}"
mkdir -p "$out"
export PYTHONPATH="$PWD/src:${PYTHONPATH:-}" PYTHONUNBUFFERED=1
py="${PYTHON:-python3}"
status=0
step() {  # step NAME COMMAND...: run it, keep its log as OUT_DIR/NAME.log, remember a failure
    local name="$1"; shift
    echo "== $name"
    "$@" 2>&1 | tee "$out/$name.log" || status=1
}

nvidia-smi -L
step cuda_parity "$py" -m pytest -q tests/test_cuda.py
step generate "$py" benchmarks/generate.py --device cuda --dtype bfloat16 --batch 1 8 64 \
    --hf-cache dynamic static --modes auto --repeats 3 --out "$out/generate.json"
step train_throughput "$py" benchmarks/train_throughput.py --device cuda --repeats 3 \
    --steps 10 --out "$out/train_throughput.json"
step demo "$py" -m lmforge demo --minutes 2 --out "$out/demo" \
    model.n_layer=6 model.d_model=384 model.n_head=6 batch_size=64 progress=false
step fsdp "$py" -m torch.distributed.run --standalone --nproc_per_node=1 -m lmforge \
    pretrain --config gpt2-small "data.shards=$out/demo/shards" "out_dir=$out/fsdp" parallel=fsdp \
    max_steps=60 batch_size=8 grad_accum=1 data.seq_len=256 model.max_seq_len=256 eval_every=30 \
    ckpt_every=30 optim.warmup_steps=10 progress=false
exit $status
