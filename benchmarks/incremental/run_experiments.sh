#!/usr/bin/env bash
# The incremental-learning experiments of docs/incremental/README.md, reduced CPU configuration (batch 16, 100 steps
# per epoch, learning rate 2e-3, seed 0; 500 steps per task in a model), one run at a time.
#
#   [PIPELINE='--fixed-size 96'] benchmarks/incremental/run_experiments.sh DATA_DIR RUNS_DIR [EXPERIMENT ...]
#
# PIPELINE: the label-space options of the base model's pipeline; default: per-task plans with 96x96-pixel patches
# (--patch-pixels 9216, the compute per step of the first tables, which squashed every slice to 96x96:
# PIPELINE='--fixed-size 96').
# DATA_DIR holds the shared tasks (msd_hippocampus, acdc_cardiac, ddsm_mammo_tissue, sunnybrook_lv); every model
# goes to RUNS_DIR/<name>, its log to RUNS_DIR/<name>.log and its wall-clock seconds to RUNS_DIR/wallclock.tsv.
# Finished runs are skipped, so the script can be repeated. Then: labelshare-bench incremental-summary RUNS_DIR
set -euo pipefail
DATA=$(realpath "$1"); RUNS=$2; shift 2
mkdir -p "$RUNS"
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
BUDGET=(--batch-size 16 --steps-per-epoch 100 --learning-rate 2e-3 --seed 0 --device cpu)
BASE_TASKS=(--task "hippocampus=$DATA/msd_hippocampus" --task "acdc=$DATA/acdc_cardiac"
            --task "mammo=$DATA/ddsm_mammo_tissue")
REPLAY=(--replay-task "hippocampus=$DATA/msd_hippocampus" --replay-task "acdc=$DATA/acdc_cardiac"
        --replay-task "mammo=$DATA/ddsm_mammo_tissue")
SUNNYBROOK=(--task "sunnybrook=$DATA/sunnybrook_lv")

run() {  # run NAME labelshare-arguments...
  local name=$1; shift
  [ -d "$RUNS/$name" ] && return 0
  local start; start=$(date +%s.%N)
  nice -n 10 labelshare "$@" --out "$RUNS/$name" > "$RUNS/$name.log" 2>&1
  printf '%s\t%.1f\n' "$name" "$(echo "$(date +%s.%N) - $start" | bc)" >> "$RUNS/wallclock.tsv"
}

base() {
  # shellcheck disable=SC2086  # PIPELINE is a list of options
  [ -f "$RUNS/base-labelspace.json" ] || labelshare labelspace build "${BASE_TASKS[@]}" ${PIPELINE:---patch-pixels 9216} \
    -o "$RUNS/base-labelspace.json"
  run base-3task train --labelspace "$RUNS/base-labelspace.json" "${BASE_TASKS[@]}" --epochs 15 \
    "${BUDGET[@]}"
}
add() {  # add NAME add-task-arguments...: a task added to the 3-task model. The settings before the defaults were
  # chosen (500 steps, no distillation) come first; each experiment's own arguments override them.
  local name=$1; shift
  run "$name" add-task --model "$RUNS/base-3task" "${REPLAY[@]}" --accept-regression "${BUDGET[@]}" --epochs 5 \
    --distill-weight 0 --new-task-share 0.5 "$@"
}

experiment() {
  case $1 in
    base) base ;;
    overlap) add add-overlap "${SUNNYBROOK[@]}" --strategy overlap --replay-cases all ;;
    size) add add-size "${SUNNYBROOK[@]}" --strategy size --replay-cases all ;;
    overlap-noreplay) add add-overlap-noreplay "${SUNNYBROOK[@]}" --strategy overlap --replay-cases 0 ;;
    size-noreplay) add add-size-noreplay "${SUNNYBROOK[@]}" --strategy size --replay-cases 0 ;;
    overlap-replay8) add add-overlap-replay8 "${SUNNYBROOK[@]}" --strategy overlap --replay-cases 8 ;;
    overlap-distill) add add-overlap-distill "${SUNNYBROOK[@]}" --strategy overlap --replay-cases all \
                       --distill-weight 1 ;;
    overlap-distill-300) add add-overlap-distill-300 "${SUNNYBROOK[@]}" --strategy overlap --replay-cases all \
                           --distill-weight 1 --epochs 3 ;;
    overlap-distill-lr1e-3) add add-overlap-distill-lr1e-3 "${SUNNYBROOK[@]}" --strategy overlap --replay-cases all \
                              --distill-weight 1 --learning-rate 1e-3 ;;
    overlap-distill-300-share25) add add-overlap-distill-300-share25 "${SUNNYBROOK[@]}" --strategy overlap \
                                   --replay-cases all --distill-weight 1 --epochs 3 --new-task-share 0.25 ;;
    overlap-distill-300-lr1e-3) add add-overlap-distill-300-lr1e-3 "${SUNNYBROOK[@]}" --strategy overlap \
                                  --replay-cases all --distill-weight 1 --epochs 3 --learning-rate 1e-3 ;;
    expansion)  # a 4-label task (n* of the base is 3), made in a temporary folder from Sunnybrook
      local split; split=$(mktemp -d)/sunnybrook4
      labelshare-bench split-task "$DATA/sunnybrook_lv" "$split"
      add add-sunnybrook4 --task "sunnybrook4=$split" --strategy overlap --replay-cases all ;;
    *) echo "unknown experiment $1" >&2; exit 2 ;;
  esac
}

for name in "${@:-base overlap size overlap-noreplay overlap-replay8 overlap-distill expansion overlap-distill-300 \
overlap-distill-lr1e-3 overlap-distill-300-share25 overlap-distill-300-lr1e-3}"; do
  for each in $name; do experiment "$each"; done
done
