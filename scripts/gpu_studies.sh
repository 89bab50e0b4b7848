#!/usr/bin/env bash
# bnsweep's GPU checks in one run, for a machine lent for a short time:
#   scripts/gpu_studies.sh OUT_DIR
# 1. the GPU's tests (tests/test_gpu.py: fused kernels equal the per-member ones to rounding,
#    a vectorized sweep on the GPU, the CUDA half of the BN reference tests);
# 2. python -m bnsweep.bench --only vectorize (stacked vs plain steps, lenet_fc_bn2 and the
#    init study's CNN with 27 members, and a one-epoch sweep of 8 seeds);
# 3. the full init-scale study as one vectorized job: python sweep.py study=init_scale
#    sweep.vectorize=true (9 std × 3 seeds × 10,000 steps, validation every 100 steps).
# Each step's output and timing lands in OUT_DIR (its log, the study's sweep folder without the
# checkpoints, summary.md); a step that fails is named in OUT_DIR/status.txt and the next runs.
# Environment: the project installed (README), MNIST where BNSWEEP_DATA points or in ./data.
# GPU_STUDY_LIMIT: seconds the study may take (default 420). TINY=1: tiny settings, to try the
# script on a CPU before the machine is lent (the same steps, a few steps each).
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:?usage: scripts/gpu_studies.sh OUT_DIR}
mkdir -p "$out"
status="$out/status.txt"
: >"$status"
limit=${GPU_STUDY_LIMIT:-420}

step() {  # step NAME COMMAND...: run, log, time, record the exit status
    local name=$1 start rc
    shift
    start=$(date +%s)
    "$@" >"$out/$name.log" 2>&1
    rc=$?
    echo "$name rc=$rc $(($(date +%s) - start))s" | tee -a "$status"
}

python - >"$out/machine.txt" 2>&1 <<'PY'
import torch
print("torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available())
if torch.cuda.is_available():
    print(torch.cuda.get_device_name(0), round(torch.cuda.get_device_properties(0).total_memory / 2**30), "GiB")
PY
cat "$out/machine.txt"

if [ "${TINY:-0}" = 1 ]; then
    study=(study=init_scale sweep.vectorize=true "seeds=[0,1]" data.train_size=1000
           trainer.max_steps=20 trainer.val_check_interval=10 trainer.limit_val_batches=1
           trainer.limit_test_batches=1 init.std=0.01,0.1,1.0)
    bench=(--only vectorize --rounds 1 --devices cpu)
    tests=(tests/test_gpu.py -q -n 0 -x -k fused)
else
    study=(study=init_scale sweep.vectorize=true)
    bench=(--only vectorize --rounds 1)
    tests=(tests/test_gpu.py -q -n 0)
fi

step tests python -m pytest "${tests[@]}"
step bench python -m bnsweep.bench "${bench[@]}"
step init_scale timeout "$limit" python sweep.py "${study[@]}" "hydra.sweep.dir=$out/init_scale"
# the study's numbers come back; its checkpoints (27 × 2 CNNs) stay on the machine
find "$out/init_scale" -name '*.ckpt' -delete 2>/dev/null
tail -n 40 "$out/bench.log" "$out/init_scale.log" 2>/dev/null
cat "$status"
