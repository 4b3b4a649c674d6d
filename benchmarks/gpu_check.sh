#!/usr/bin/env bash
# The GPU checks, run as is on a machine with one or more CUDA GPUs (from anywhere; ~5 min on one GPU):
#   benchmarks/gpu_check.sh
# Each check is a short `sapo-lightning fit` on the GPU(s), printed as PASS/FAIL/SKIP with its steps per
# second and peak memory (torch.cuda.max_memory_allocated on rank 0); the pass criteria are in
# benchmarks/gpu_check.py. The exit status is non-zero if any check failed. Runs are kept under
# $GPU_CHECK_DIR (default ./gpu_check_runs; each check's output.log and TensorBoard events).
#
# Dry run of the plumbing on a CPU (tiny step counts, no learning thresholds, 16-mixed skipped):
#   benchmarks/gpu_check.sh --cpu          # or GPU_CHECK_ACCELERATOR=cpu benchmarks/gpu_check.sh
set -u
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
ACCEL=${GPU_CHECK_ACCELERATOR:-gpu}
[ "${1:-}" = "--cpu" ] && ACCEL=cpu
export GPU_CHECK_DIR=${GPU_CHECK_DIR:-$PWD/gpu_check_runs} HF_HUB_OFFLINE=1 OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}

if [ "$ACCEL" = cpu ]; then
  NGPU=2                                   # DDP and FSDP over 2 CPU processes (gloo)
  S_SEED=4 S_HF=4 S_TEXT=4                 # steps: plumbing only
  LEARN=() EXACT_SEED=() EXACT_TEXT=()     # no learning thresholds in so few steps
  SKIP16=(--skip "16-mixed needs a GPU (refused on a CPU)")
else
  NGPU=$($PY -c "import torch; print(torch.cuda.device_count())")
  if [ "$NGPU" -lt 1 ]; then echo "FAIL  no CUDA GPU visible to torch (run with --cpu for the dry run)"; exit 1; fi
  S_SEED=200 S_HF=200 S_TEXT=1000
  LEARN=(--learns) EXACT_SEED=(--min-exact 0.9) EXACT_TEXT=(--min-exact 0.8 --learns)
  SKIP16=()
fi
echo "gpu_check: accelerator=$ACCEL, devices=$NGPU, $($PY -c 'import torch, lightning; print("torch", torch.__version__, "lightning", lightning.__version__)'), runs in $GPU_CHECK_DIR"
rm -rf "$GPU_CHECK_DIR"

ON=(--trainer.accelerator="$ACCEL" --trainer.enable_progress_bar=false)
HF=(--config configs/hf_tiny.yaml "${ON[@]}" --trainer.max_steps=$S_HF --trainer.val_check_interval=$S_HF --trainer.log_every_n_steps=$(( S_HF < 10 ? 1 : 10 )))
[ "$ACCEL" = cpu ] && HF+=(--data.batch_size=4 --data.val_size=16)
LORA_ARG='{r: 8, alpha: 16, dropout: 0.0, target_modules: [q_proj, v_proj]}'
HAS_PEFT=$($PY -c "import importlib.util; print(int(importlib.util.find_spec('peft') is not None))")
SKIPLORA=(); [ "$HAS_PEFT" = 1 ] || SKIPLORA=(--skip "peft is not installed (pip install -e \".[peft]\")")

failed=0
check() { $PY benchmarks/gpu_check.py "$@" || failed=$((failed + 1)); }

# DDP over every device: the seed task solved, one rank per GPU
check ddp --world "$NGPU" "${EXACT_SEED[@]}" -- --config configs/sapo.yaml --config configs/ddp.yaml "${ON[@]}" \
  --trainer.devices="$NGPU" --trainer.max_steps=$S_SEED --trainer.val_check_interval=$S_SEED --trainer.log_every_n_steps=$(( S_SEED < 10 ? 1 : 10 ))
# mixed precision on the HF policy: finite, and the reward rises
check bf16-mixed "${LEARN[@]}" -- "${HF[@]}" --trainer.precision=bf16-mixed
check 16-mixed "${SKIP16[@]}" "${LEARN[@]}" -- "${HF[@]}" --trainer.precision=16-mixed
# micro-batches: 128 responses in chunks of 32
check micro-batch "${LEARN[@]}" -- "${HF[@]}" --model.micro_batch_size=$([ "$ACCEL" = cpu ] && echo 8 || echo 32)
# FSDP2 over every device, with a lagged (sharded) old policy
check fsdp --world "$NGPU" "${LEARN[@]}" -- "${HF[@]}" --config configs/fsdp.yaml "${ON[@]}" --trainer.devices="$NGPU" \
  --trainer.strategy.init_args.data_parallel_size="$NGPU" --sync.every_n_steps=4
# LoRA adapters on q_proj and v_proj (random base: it must run, not learn)
check lora "${SKIPLORA[@]}" -- "${HF[@]}" --model.policy.init_args.lora="$LORA_ARG"
# the text demo on the GPU: accuracy on the validation prompts
check text-demo "${EXACT_TEXT[@]}" -- --config configs/text_tiny.yaml "${ON[@]}" --trainer.max_steps=$S_TEXT \
  $([ "$ACCEL" = cpu ] && echo "--trainer.val_check_interval=4 --trainer.log_every_n_steps=1 --data.batch_size=4 --data.val_size=16")

if [ "$failed" -gt 0 ]; then echo "gpu_check: $failed check(s) FAILED"; exit 1; fi
echo "gpu_check: all checks passed"
