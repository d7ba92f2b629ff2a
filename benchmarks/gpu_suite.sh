#!/usr/bin/env bash
# The GPU figures of docs/speed.md and docs/results.md on one CUDA machine, each stage with its own time limit, into one
# folder (<stage>.jsonl: the JSON lines it printed; <stage>.log; result files; summary.tsv: stage,
# exit status, seconds); a failed or timed-out stage is recorded and the next one runs.
#
#   bash benchmarks/gpu_suite.sh run OUT [STAGE ...]   # on the GPU machine (torch with CUDA in place)
#   bash benchmarks/gpu_suite.sh wheels                # here: the toolkit's other wheels -> .whl/
#   bash benchmarks/gpu_suite.sh install               # there, offline: .whl/ -> /tmp/site
#
# The whole suite takes about an hour; benchmarks/gpu_lease.sh runs what fits one 10-minute device call
# (tests, the train and plan figures with their floors, a profile).
#
# Stages (default: tests plan train pusht reacher, in that order):
#   tests    pytest -m gpu: the CUDA-only tests (every planner on CUDA; a whole compiled `wm train`
#            with CUDA graphs against eager)
#   plan     plan_latency.py on cuda: CEM 300 x 30 fp32 / bf16 autocast / bf16 weights, eager and in
#            one CUDA graph, with the FLOP roofline; iCEM 300 x 5 in a CUDA graph; CEM (bf16) with
#            torch.compile inside the graph (compiling takes minutes)                    (~5-10 min)
#   train    train_profile.py, lewm preset at 224 px and at 64 px / patch 8, batch 128: eager,
#            compile, compile + CUDA graphs (reduce-overhead); then train_speed.py at 224 px under
#            CUDA graphs with --roofline (the step's FLOP and op floors: is 6,000 samples/s possible?)
#                                                                                        (~5 min)
#   pusht    reproduce.py --env pusht --scale full with $SUITE_STEPS steps (default 20000) and the
#   reacher  whole training under CUDA graphs (compile=true compile_mode=reduce-overhead), then
#            planner_table.py with iCEM at CEM's compute on the same 50 tasks, `wm eval
#            cuda_graph=true` (the controller's graphed CEM) on them with precision=fp32 and bf16 and
#            at planner seeds 1 and 2, and `wm compare` of them all
#                                                                                  (~12-15 min each)
#   envs     the env stages of $SUITE_ENVS (default "pusht reacher") at the same time, side by side on
#            the one GPU, each into its own <env>.jsonl / <env>.log: about one env stage's wall time
#            for both (their stage times and plan latencies are then under contention: say so). An
#            entry ENV@LR trains at learning rate LR instead of the recipe's 5e-5 (files <env>_lr<LR>):
#            SUITE_ENVS="reacher reacher@3e-4" compares two learning rates in one sitting
#   oracle   oracle_ceiling.py (state and latent oracles) on each eval the pusht/reacher stages wrote
#
# Knobs (environment): SUITE_STEPS (training steps of the env stages), SUITE_SEED (training seed, 0),
# SUITE_ENVS (the envs stage's envs), SUITE_LIMIT_<STAGE> (seconds; defaults below), PYTHON (the
# interpreter with torch; python3). `wm` need not be installed (the scripts run the stages
# in-process), but the toolkit's dependencies must import.
#
# An offline GPU machine whose image has torch but not mujoco, gymnasium, hydra or dm_control: run
# `wheels` here (Python 3.12, x86-64; dm_control without its locomotion and dog assets, ~34 MB in
# all; no imageio-ffmpeg, so videos fall back to GIF), carry .whl/ over, and there run
# `bash benchmarks/gpu_suite.sh install && export PYTHONPATH=/tmp/site:$PWD` before `run`.
set -uo pipefail
cd "$(dirname "$0")/.."
export PY=${PYTHON:-python3}       # the interpreter that holds torch

WHEELS=(mujoco==3.17.0 gymnasium==1.4.0 farama-notifications==0.0.6 hydra-core==1.3.8 omegaconf==2.3.1
        dm-control==1.0.50 dm-env==1.6 dm-tree==0.1.10 pyopengl==3.1.10 glfw==2.11.0)
PLATFORMS=(manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_24_x86_64 manylinux_2_17_x86_64
           manylinux2014_x86_64 manylinux1_x86_64)

wheels() {   # wheels for an offline Python ${PYVER:-3.12} x86-64 machine, into .whl/
    local py=${PYVER:-3.12} plat=() p
    for p in "${PLATFORMS[@]}"; do plat+=(--platform "$p"); done
    rm -rf .whl && mkdir -p .whl/tmp
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version "$py" --implementation cp \
        "${plat[@]}" -d .whl "${WHEELS[@]}" || return 1
    python3 -m pip wheel -q --no-deps -w .whl antlr4-python3-runtime==4.9.3 || return 1   # sdist only
    # dm_control: only what the suite (Reacher, the generic adapter) imports; its wheel is 56 MB
    local whl; whl=$(ls .whl/dm_control-*.whl)
    python3 - "$whl" <<'EOF' || return 1
import sys, zipfile
src = sys.argv[1]
drop = ("dm_control/locomotion/", "dm_control/suite/dog_assets/", "dm_control/mujoco/testing/",
        "dm_control/blender/", "dm_control/mjcf/test_assets/", "dm_control/third_party/kinova/")
tmp = src + ".slim"
with zipfile.ZipFile(src) as zin, zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as zout:
    for item in zin.infolist():
        if not item.filename.startswith(drop) and not item.filename.endswith(".png"):
            zout.writestr(item, zin.read(item.filename))
import os; os.replace(tmp, src)
EOF
    rmdir .whl/tmp
    du -sh .whl && ls .whl
}

install() {  # there: every wheel in .whl/ into /tmp/site (no index, no dependency resolution)
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
        .whl/*.whl && echo "export PYTHONPATH=/tmp/site:$PWD"
}

stage() {    # stage NAME LIMIT_S COMMAND...: run with a time limit, log, record rc and seconds
    local name=$1 limit=$2; shift 2
    local var="SUITE_LIMIT_${name^^}"; limit=${!var:-$limit}
    local t0=$SECONDS
    echo "== $name (limit ${limit}s): $*" | tee -a "$OUT/suite.log"
    timeout --kill-after=30 "$limit" "$@" >"$OUT/$name.jsonl" 2>"$OUT/$name.log"
    local rc=$?
    printf '%s\t%s\t%s\n' "$name" "$rc" "$((SECONDS - t0))" >>"$OUT/summary.tsv"
    echo "== $name rc=$rc in $((SECONDS - t0))s" | tee -a "$OUT/suite.log"
}

run_env() {  # run_env ENV[@LR]: the full recipe (at learning rate LR if given) with the whole training
             # under CUDA graphs, then iCEM; its files are named <ENV>[_lr<LR>]
    local env=${1%%@*} name=${1/@/_lr} lr= steps=${SUITE_STEPS:-20000} seed=${SUITE_SEED:-0}
    [[ $1 == *@* ]] && lr=${1#*@}
    "$PY" -m benchmarks.reproduce --env "$env" --scale full --seeds "$seed" --steps "$steps" --videos 0 \
        ${lr:+--lr "$lr"} --quiet --out "$OUT/runs/$name" --json "$OUT/${name}_full_steps${steps}.json" \
        --train-extra compile=true compile_mode=reduce-overhead || return $?
    local ckpt="$OUT/runs/$name/seed$seed/train/best.pt" rc=0
    "$PY" -m benchmarks.planner_table --checkpoint "$ckpt" --planners icem --device cuda --videos 0 --quiet \
        --out "$OUT/runs/$name/planners" --json "$OUT/planner_table_${name}_full_steps${steps}.json" || rc=$?
    # the controller's CUDA-graph path on the same 50 tasks (LeWM's CEM): with the fp32 and the bf16
    # predictor (success and plan latency), and at planner seeds 1 and 2 (a seed alone moves a 50-task
    # eval by several tasks: docs/analysis.md)
    local p ev extra evs=()
    for p in fp32 bf16 seed1 seed2; do
        case $p in
            fp32) ev=eval_cuda_graph extra= ;;
            bf16) ev=eval_cuda_graph_bf16 extra=precision=bf16 ;;
            seed*) ev=eval_cuda_graph_$p extra=planner.seed=${p#seed} ;;
        esac
        "$PY" -m worldmodel.cli eval checkpoint="$ckpt" cuda_graph=true videos=0 random_floor=false \
            progress=false device=cuda out="$OUT/runs/$name/$ev" overwrite=true $extra || rc=$?
        cp "$OUT/runs/$name/$ev/results.json" "$OUT/${name}_$ev.json" 2>/dev/null
        evs+=("$OUT/runs/$name/$ev")
    done
    # all on the same tasks, paired (the table goes to the stage log, compare.json beside the results)
    "$PY" -m worldmodel.cli compare "$OUT/runs/$name/seed$seed/eval" "$OUT/runs/$name/planners/icem" "${evs[@]}" \
        names=[cem,icem,cem_cuda_graph,cem_cuda_graph_bf16,cem_cuda_graph_seed1,cem_cuda_graph_seed2] \
        out="$OUT/runs/$name/compare" >&2 \
        && cp "$OUT/runs/$name/compare/compare.json" "$OUT/compare_${name}_full_steps${steps}.json"
    return $rc
}

run_envs() { # run_envs ENV[@LR]...: run_env for each at once, each with its own logs; fails if any did
    local spec pids=() rc=0 pid
    for spec in "$@"; do
        run_env "$spec" >"$OUT/${spec/@/_lr}.jsonl" 2>"$OUT/${spec/@/_lr}.log" &
        pids+=($!)
    done
    for pid in "${pids[@]}"; do wait "$pid" || rc=$?; done
    return $rc
}

oracles() {  # state and latent oracles on each eval the env stages wrote
    local ev env rc=0
    for ev in "$OUT"/runs/*/seed*/eval/results.json; do
        [ -e "$ev" ] || continue
        env=${ev#"$OUT"/runs/}; env=${env%%/*}
        "$PY" -m benchmarks.oracle_ceiling --eval "$ev" --device cuda --json "$OUT/oracle_ceiling_${env}_full.json" \
            || rc=$?
    done
    return $rc
}

run() {
    OUT=${1:?usage: gpu_suite.sh run OUT [STAGE ...]}; shift
    local stages=("$@") s; [ ${#stages[@]} -gt 0 ] || stages=(tests plan train pusht reacher)
    for s in "${stages[@]}"; do          # refuse a misspelt stage before any work
        case $s in tests|plan|train|pusht|reacher|tworoom|envs|oracle) ;;
            *) echo "unknown stage '$s': choose from tests plan train pusht reacher tworoom envs oracle" >&2; return 2 ;;
        esac
    done
    for s in ${SUITE_ENVS:-}; do         # and a malformed SUITE_ENVS entry
        [[ $s =~ ^(pusht|reacher|tworoom)(@[0-9]*\.?[0-9]+([eE][-+]?[0-9]+)?)?$ ]] || {
            echo "bad SUITE_ENVS entry '$s': ENV or ENV@LR, ENV one of pusht reacher tworoom (e.g. reacher@3e-4)" >&2
            return 2; }
    done
    "$PY" -c "import torch, sys; sys.exit(not torch.cuda.is_available())" 2>/dev/null || {
        echo "torch sees no CUDA device here: this suite measures a GPU (install torch's CUDA build)" >&2
        return 2; }
    mkdir -p "$OUT" && OUT=$(cd "$OUT" && pwd)
    export OUT MUJOCO_GL=egl PYTHONUNBUFFERED=1
    "$PY" - >"$OUT/machine.json" <<'EOF'
import datetime, json, sys
from benchmarks import recipes
print(json.dumps({"date": datetime.date.today().isoformat(), "git": recipes.git_commit(),
                  "machine": recipes.machine("cuda")}))
EOF
    for s in "${stages[@]}"; do
        case $s in
            tests) stage tests 600 bash -c '"$PY" -m pytest -q -m gpu -p no:cacheprovider >&2' ;;
            plan) stage plan 900 bash -c 'rc=0   # every setting runs; the stage fails if one did
                for opt in "--dtype float32,bfloat16,bfloat16_weights --roofline" \
                           "--dtype float32,bfloat16,bfloat16_weights --cuda-graph --roofline" \
                           "--planner icem --samples 300 --iterations 5 --cuda-graph" \
                           "--dtype bfloat16_weights,bfloat16 --cuda-graph --compile"; do
                    "$PY" -m benchmarks.plan_latency --device cuda $opt || rc=$?
                done; exit $rc' ;;
            train) stage train 600 bash -c 'rc=0
                for px in "" "model.patch_size=8 model.image_size=64"; do
                    for opt in "" "--compile" "--compile --compile-mode reduce-overhead"; do
                        "$PY" -m benchmarks.train_profile --preset lewm --batch 128 --device cuda $opt $px || rc=$?
                    done
                done
                "$PY" -m benchmarks.train_speed --preset lewm --batch 128 --device cuda --compile \
                    --compile-mode reduce-overhead --roofline || rc=$?
                exit $rc' ;;
            pusht|reacher|tworoom) stage "$s" 1800 bash -c 'run_env "$1"' _ "$s" ;;
            envs) stage envs 1800 bash -c 'run_envs ${SUITE_ENVS:-pusht reacher}' ;;
            oracle) stage oracle 1800 bash -c oracles ;;
        esac
    done
    echo "done: $OUT/summary.tsv" | tee -a "$OUT/suite.log"
}

export -f run_env run_envs oracles
case ${1:-} in
    wheels) wheels ;;
    install) install ;;
    run) shift; run "$@" ;;
    *) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit 2 ;;
esac
