#!/usr/bin/env bash
# bnsweep's GPU checks, for a machine lent for a short time:
#   scripts/gpu_studies.sh OUT_DIR [STEP ...]      (the steps, in this order by default:)
#   init_scale    the full init-scale study as one vectorized job: python sweep.py
#                 study=init_scale sweep.vectorize=true (9 std × 3 seeds × 10,000 steps,
#                 validation every 100 steps); target ≤ 10 min on one GPU
#   bench         python -m bnsweep.bench --only vectorize (stacked vs plain steps, lenet_fc_bn2
#                 and the init study's CNN with 27 members, the 8-seed one-epoch sweep: ≥ 5×)
#   bn_placement  python sweep.py study=bn_placement sweep.vectorize=true (5 jobs of 3 seeds)
#   tests         tests/test_gpu.py (fused kernels equal the per-member ones to rounding, a
#                 vectorized sweep on the GPU, the CUDA half of the BN reference tests)
# Each step's log, wall time and exit status land in OUT_DIR (status.txt; a step that fails is
# named there and the next runs); a study's sweep folder lands there without its checkpoints,
# ready for docs/results/. A step's time limit: GPU_STEP_LIMIT seconds (default 540; a device
# call lasts at most 600 s, so give one call one step, or several short ones).
# Environment: the project installed (README.md), MNIST where BNSWEEP_DATA points or in ./data.
# TINY=1: tiny settings, to try the script on a CPU before the machine is lent.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:?usage: scripts/gpu_studies.sh OUT_DIR [init_scale] [bench] [bn_placement] [tests]}
shift
steps=("$@")
[ ${#steps[@]} -gt 0 ] || steps=(init_scale bench bn_placement tests)
mkdir -p "$out"
status="$out/status.txt"
limit=${GPU_STEP_LIMIT:-540}

step() {  # step NAME COMMAND...: run (bounded), log, time, record the exit status
    local name=$1 start rc
    shift
    start=$(date +%s)
    timeout "$limit" "$@" >"$out/$name.log" 2>&1
    rc=$?
    find "$out/$name" -name '*.ckpt' -delete 2>/dev/null  # a study's numbers, not its weights
    echo "$name rc=$rc $(($(date +%s) - start))s" | tee -a "$status"
    tail -n 25 "$out/$name.log"
}

python - 2>&1 <<'PY' | tee "$out/machine.txt"
import torch
print("torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available())
if torch.cuda.is_available():
    print(torch.cuda.get_device_name(0), round(torch.cuda.get_device_properties(0).total_memory / 2**30), "GiB")
PY

tiny=(data.train_size=1000 trainer.max_epochs=null trainer.max_steps=20 trainer.val_check_interval=10
      trainer.check_val_every_n_epoch=null trainer.limit_val_batches=1 trainer.limit_test_batches=1)
for name in "${steps[@]}"; do
    case "$name" in
        init_scale)
            extra=(); [ "${TINY:-0}" = 1 ] && extra=("seeds=[0,1]" "${tiny[@]}" init.std=0.01,0.1,1.0)
            step init_scale python sweep.py study=init_scale sweep.vectorize=true "${extra[@]}" \
                "hydra.sweep.dir=$out/init_scale" ;;
        bn_placement)
            extra=(); [ "${TINY:-0}" = 1 ] && extra=("seeds=[0,1]" "${tiny[@]}" model=lenet,lenet_fc_bn2)
            step bn_placement python sweep.py study=bn_placement sweep.vectorize=true "${extra[@]}" \
                "hydra.sweep.dir=$out/bn_placement" ;;
        bench)
            extra=(); [ "${TINY:-0}" = 1 ] && extra=(--devices cpu)
            step bench python -m bnsweep.bench --only vectorize --rounds 1 "${extra[@]}" ;;
        tests)
            extra=(); [ "${TINY:-0}" = 1 ] && extra=(-x -k fused)
            step tests python -m pytest tests/test_gpu.py -q -n 0 "${extra[@]}" ;;
        *) echo "gpu_studies.sh: unknown step $name (init_scale, bench, bn_placement, tests)" >&2; exit 2 ;;
    esac
done
cat "$status"
