#!/usr/bin/env bash
# The GPU checks that fit one device call of under 10 minutes, most wanted first, sharing one
# deadline (LEASE_S seconds, default 540): a stage gets what is left, and one that would start with
# under 20 s left is skipped and recorded so. At most 8 files come back from such a call: OUT gets
# summary.txt (the GPU, then each stage's exit status and seconds), tests.log, and <file>.jsonl
# (JSON lines) + <file>.log for plan (plan_compile appends to plan's), train and profile.
#
#   bash benchmarks/gpu_lease.sh OUT [STAGE ...]   # on the GPU machine; .whl/ from `gpu_suite.sh
#                                                  # wheels` here (.gl/ EGL loaders: device README)
# Stages (default: all, in this order):
#   tests         pytest -m gpu (every planner on CUDA, the graphed controller, a whole compiled
#                 `wm train` under CUDA graphs against eager)
#   train         lewm 224 px, batch 128, compile + CUDA graphs, with the roofline (op floors eager
#                 and in a CUDA graph)
#   plan          CEM 300 x 30 in one CUDA graph, the bf16 predictor copy and float32, with the roofline
#   plan_compile  the bf16 copy compiled inside the graph (compiling: ~50 s)
#   profile       the train step under torch.profiler: its top kernels in profile.log
#   pusht, reacher, tworoom   (not in the default) one full-scale results row, seed LEASE_SEED (0):
#                 reproduce.py --scale full with the whole training under CUDA graphs, LEASE_STEPS
#                 training steps (default: the recipe's 7,000): collect ~1.6 min on 16 workers, train,
#                 eval ~0.5 min; then the same tasks planned with the energy over every chunk
#                 (step_weights=[1,1,1,1,1]), and with it replanning after every chunk
#                 (receding_horizon=1), with CEM and with planner=icem_cpu; <env>.jsonl / <env>.log,
#                 <env>_full_steps<N>.json, <env>_eval_{step_weights,replan,replan_icem}.json
#                 (7 files with summary.txt). Run one alone, with LEASE_S near
#                 the call's limit: a row killed at the deadline keeps nothing
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${1:?usage: gpu_lease.sh OUT [STAGE ...]}; shift
stages=("$@"); [ ${#stages[@]} -gt 0 ] || stages=(tests train plan plan_compile profile)
for s in "${stages[@]}"; do
    case $s in tests|train|plan|plan_compile|profile|pusht|reacher|tworoom) ;;
        *) echo "unknown stage '$s': choose from tests train plan plan_compile profile pusht reacher tworoom" >&2
           exit 2 ;;
    esac
done
PY=${PYTHON:-python3}                   # the interpreter that holds torch
"$PY" -c "import torch, sys; sys.exit(not torch.cuda.is_available())" 2>/dev/null || {
    echo "torch sees no CUDA device here: these checks measure a GPU (run them on the device machine)" >&2
    exit 2; }
mkdir -p "$OUT"; OUT=$(cd "$OUT" && pwd)
END=$((SECONDS + ${LEASE_S:-540}))
if [ -d .whl ]; then PYTHON=$PY bash benchmarks/gpu_suite.sh install >/dev/null || exit 1; fi   # -> /tmp/site
if [ -d .gl ]; then for f in .gl/*.deb; do dpkg -x "$f" /; done; ldconfig; fi
export OUT PY PYTHONPATH=/tmp/site:$PWD MUJOCO_GL=egl PYTHONUNBUFFERED=1
{ nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,memory.total --format=csv,noheader
  "$PY" -c "import torch, mujoco, hydra; print('torch', torch.__version__)"; } 2>&1 | tee -a "$OUT/summary.txt"

env_row() {  # env_row ENV: a full-scale row (reproduce.py), then its tasks with the every-chunk energy,
             # and with that energy replanning after every chunk (CEM 300 x 30, then icem_cpu)
    local env=$1 steps=${LEASE_STEPS:-7000} seed=${LEASE_SEED:-0} name extra rc=0
    "$PY" -m benchmarks.reproduce --env "$env" --scale full --seeds "$seed" --steps "$steps" --videos 0 --quiet \
        --out "/tmp/runs/$env" --json "$OUT/${env}_full_steps$steps.json" \
        --train-extra compile=true compile_mode=reduce-overhead || return $?
    for name in step_weights replan replan_icem; do
        case $name in step_weights) extra= ;; replan) extra=receding_horizon=1 ;;
            replan_icem) extra="receding_horizon=1 planner=icem_cpu" ;; esac
        "$PY" -m worldmodel.cli eval checkpoint="/tmp/runs/$env/seed$seed/train/best.pt" "step_weights=[1,1,1,1,1]" \
            $extra videos=0 random_floor=false progress=false device=cuda out="/tmp/runs/$env/eval_$name" \
            && cp "/tmp/runs/$env/eval_$name/results.json" "$OUT/${env}_eval_$name.json" || rc=1
    done
    return $rc
}
export -f env_row

stage() {   # stage NAME FILE LIMIT_S COMMAND...: stdout to FILE.jsonl, stderr to FILE.log
    local name=$1 file=$2 lim=$3; shift 3
    local left=$((END - SECONDS)) t0=$SECONDS
    if ((left < 20)); then echo "$name skipped (${left}s left)" | tee -a "$OUT/summary.txt"; return; fi
    ((lim > left)) && lim=$left
    timeout -k 5 "$lim" "$@" >>"$OUT/$file.jsonl" 2>>"$OUT/$file.log"
    echo "$name rc=$? $((SECONDS - t0))s (limit ${lim}s)" | tee -a "$OUT/summary.txt"
}

for s in "${stages[@]}"; do
    case $s in
        tests) stage tests tests 240 bash -c '"$PY" -m pytest -q -m gpu -p no:cacheprovider -rf 1>&2' ;;
        train) stage train train 180 "$PY" -m benchmarks.train_speed --preset lewm --batch 128 --device cuda \
                   --compile --compile-mode reduce-overhead --roofline ;;
        plan) stage plan plan 120 "$PY" -m benchmarks.plan_latency --device cuda \
                  --dtype bfloat16_weights,float32 --cuda-graph --roofline --runs 20 ;;
        plan_compile) stage plan_compile plan 180 "$PY" -m benchmarks.plan_latency --device cuda \
                          --dtype bfloat16_weights --cuda-graph --compile --runs 20 ;;
        profile) stage profile profile 120 "$PY" -m benchmarks.train_profile --preset lewm --batch 128 \
                     --device cuda --compile --compile-mode reduce-overhead ;;
        pusht|reacher|tworoom) stage "$s" "$s" 600 bash -c 'env_row "$1"' _ "$s" ;;
    esac
done
find "$OUT" -type f -empty -delete
