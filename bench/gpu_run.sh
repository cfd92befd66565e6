#!/usr/bin/env bash
# Issue 21's measurements on a CUDA machine, as one prepared script: for a machine with an
# NVIDIA GPU, its driver, the CUDA toolkit's headers and PyTorch, but no Rust toolchain.
# Build here (cargo build --release; strip target/release/nabla), carry the binary beside
# the working tree, and run from the repository root:
#
#     NABLA=./nabla OUT=/tmp/out bash bench/gpu_run.sh
#
# Everything it prints is also written under $OUT. Steps, each bounded in time so that a
# slow one cannot take the rest down with it:
#   1. the machine: nvidia-smi, `nabla devices`;
#   2. the conformance suite on cuda against the f64 interpreter (`nabla conformance`);
#   3. the MNIST MLP trained on cuda, f32 then bf16 (test accuracy, epoch times);
#   4. nabla beside PyTorch eager and torch.compile on the same GPU (bench/torch_gpu.py).
set -u
NABLA=${NABLA:-./nabla}
OUT=${OUT:-/tmp/nabla-gpu-run}
mkdir -p "$OUT"
step() { # name, seconds, command...
  local name=$1 limit=$2
  shift 2
  echo "== $name"
  local t0=$(date +%s)
  timeout "$limit" "$@" 2>&1 | tee "$OUT/$name.txt"
  local rc=${PIPESTATUS[0]}
  echo "== $name: exit $rc after $(( $(date +%s) - t0 )) s"
}
step machine 30 bash -c "nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv; ls -d /usr/local/cuda* 2>/dev/null; $NABLA devices"
step conformance 240 "$NABLA" conformance --device cuda
mlp_bf16=$(mktemp --suffix=.net)
sed 's/optimizer: sgd(lr: 0.1), batch: 128, epochs: 12/optimizer: sgd(lr: 0.1), batch: 128, epochs: 12, precision: "bf16"/' examples/mnist_mlp.net > "$mlp_bf16"
step mlp-f32 120 "$NABLA" run examples/mnist_mlp.net --device cuda
step mlp-bf16 120 "$NABLA" run "$mlp_bf16" --device cuda
step torch 420 python3 bench/torch_gpu.py --nabla "$NABLA" --steps 30 --rounds 3
