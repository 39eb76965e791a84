#!/usr/bin/env bash
# The incremental-learning experiments of docs/incremental/README.md, reduced CPU configuration (batch 16, 100 steps
# per epoch, learning rate 2e-3, seed 0; 500 steps per task in a model), one run at a time.
#
#   [PIPELINE='--fixed-size 96'] [SEED=N] benchmarks/incremental/run_experiments.sh DATA_DIR RUNS_DIR [EXPERIMENT ...]
#
# PIPELINE: the label-space options of the base model's pipeline; default: per-task plans with 96x96-pixel patches
# (--patch-pixels 9216, the compute per step of the first tables, which squashed every slice to 96x96:
# PIPELINE='--fixed-size 96').
# DATA_DIR holds the shared tasks (msd_hippocampus, acdc_cardiac, ddsm_mammo_tissue, sunnybrook_lv); every model
# goes to RUNS_DIR/<name>, its log to RUNS_DIR/<name>.log and its wall-clock seconds to RUNS_DIR/wallclock.tsv.
# SEED (default 0): the seed of the rehearsal-memory experiments' add-task runs (their names get "-seed<N>" unless it
# is 0; the base models and their memories stay those of seed 0), to repeat a row with another seed.
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
base2() {  # the second pair's base: an MR-only model, the look-alike cardiac labels grouped as in the default model
  # shellcheck disable=SC2086  # PIPELINE is a list of options
  [ -f "$RUNS/base2-labelspace.json" ] || labelshare labelspace build "${MR_TASKS[@]}" \
    --group acdc:lv_cavity=sunnybrook:lv_cavity --group acdc:myocardium=sunnybrook:lv_myocardium \
    ${PIPELINE:---patch-pixels 9216} -o "$RUNS/base2-labelspace.json"
  run base2-3task-mr train --labelspace "$RUNS/base2-labelspace.json" "${MR_TASKS[@]}" --epochs 15 "${BUDGET[@]}"
}
add() {  # add NAME add-task-arguments...: a task added to the 3-task model. The settings before the defaults were
  # chosen (500 steps, no distillation) come first; each experiment's own arguments override them.
  local name=$1; shift
  run "$name" add-task --model "$RUNS/base-3task" "${REPLAY[@]}" --accept-regression "${BUDGET[@]}" --epochs 5 \
    --distill-weight 0 --new-task-share 0.5 "$@"
}

# Rehearsal memory (docs/incremental/memory.md): a task added to a base model three ways (the old tasks' folders:
# full replay; only the base's rehearsal memory, at three sizes; no replay) with today's add-task defaults and the
# budget of the earlier rows (300 steps); every version published (--accept-regression) and scored on the full
# validation cases of every old task (RUNS_DIR/<name>.evaluation/<task>/evaluation.csv).
MEMORY_SIZES=(16 48 128)
MR_TASKS=(--task "hippocampus=$DATA/msd_hippocampus" --task "acdc=$DATA/acdc_cardiac"
          --task "sunnybrook=$DATA/sunnybrook_lv")
MR_REPLAY=(--replay-task "hippocampus=$DATA/msd_hippocampus" --replay-task "acdc=$DATA/acdc_cardiac"
           --replay-task "sunnybrook=$DATA/sunnybrook_lv")
MAMMO=(--task "mammo=$DATA/ddsm_mammo_tissue")

memory_of() {  # memory_of BASE SIZE task-arguments...: BASE with a rehearsal memory of SIZE replay slices per task
  local base=$1 size=$2; shift 2
  run "$base-mem$size" memory --model "$RUNS/$base" "$@" --memory-slices "$size" --device cpu
}
SEED=${SEED:-0}
SEEDED=$([ "$SEED" = 0 ] || echo "-seed$SEED")
added() {  # added NAME BASE add-task-arguments...: today's defaults, the earlier rows' budget, always published
  local name=$1$SEEDED base=$2; shift 2
  run "$name" add-task --model "$RUNS/$base" --accept-regression "${BUDGET[@]}" --epochs 3 --seed "$SEED" "$@"
  score "$name"
}
score() {  # score NAME: every task of the model on its validation cases, at native resolution (labelshare evaluate)
  local name=$1 task folder
  for folder in "$DATA"/msd_hippocampus "$DATA"/acdc_cardiac "$DATA"/ddsm_mammo_tissue "$DATA"/sunnybrook_lv; do
    task=$(case $folder in *hippocampus) echo hippocampus ;; *acdc*) echo acdc ;; *mammo*) echo mammo ;;
           *) echo sunnybrook ;; esac)
    grep -q "\"$task\"" "$RUNS/$name/labelspace.json" || continue
    grep -q "^$task," "$RUNS/$name/evaluation.csv" && continue  # the run scored it on its validation cases
    [ -f "$RUNS/$name.evaluation/$task/evaluation.csv" ] && continue
    nice -n 10 labelshare evaluate --model "$RUNS/$name" --task "$task" --data "$folder" --device cpu \
      -o "$RUNS/$name.evaluation/$task" --progress quiet > /dev/null
  done
}
small_slices_memory() {  # small_slices_memory BASE 48px|48px1m task-arguments...: the memory of 48 slices per task
  # with the hippocampus chosen again to hold 500,000 (48px) or 1,000,000 (48px1m) pixels
  local base=$1 suffix=$2; shift 2
  memory_of "$base" 48 "$@"
  run "$base-mem$suffix" memory --model "$RUNS/$base-mem48" --task "hippocampus=$DATA/msd_hippocampus" \
    --memory-replay-pixels "$([ "$suffix" = 48px1m ] && echo 1000000 || echo 500000)" --device cpu
}
without_cases() {  # without_cases TASK_DIR COUNT OUT: a copy (hard links) of a task folder without its last COUNT cases
  python - "$@" <<'PY'
import json, os, sys
from pathlib import Path
from labelshare.core.tasks import TaskDataset
source, count, out = Path(sys.argv[1]), int(sys.argv[2]), Path(sys.argv[3])
if not out.exists():
    task = TaskDataset.open(source, "task")
    kept = task.cases[:-count]
    for case in kept:
        for path in (case.image_path, case.label_path):
            target = out / path.relative_to(source)
            target.parent.mkdir(parents=True, exist_ok=True)
            os.link(path, target)
    data = json.loads((source / "dataset.json").read_text())
    data["numTraining"] = len(kept)
    (out / "dataset.json").write_text(json.dumps(data, indent=1))
PY
}

experiment() {
  case $1 in
    memory-bases)  # the two base models with memories of every size
      for size in "${MEMORY_SIZES[@]}"; do
        memory_of base-3task "$size" "${BASE_TASKS[@]}"
        memory_of base2-3task-mr "$size" "${MR_TASKS[@]}"
      done ;;
    mem-full) added mem-sunnybrook-full base-3task "${SUNNYBROOK[@]}" "${REPLAY[@]}" ;;
    mem-noreplay) added mem-sunnybrook-noreplay base-3task "${SUNNYBROOK[@]}" "${REPLAY[@]}" --replay-cases 0 ;;
    mem16|mem48|mem128)
      memory_of base-3task "${1#mem}" "${BASE_TASKS[@]}"
      added "mem-sunnybrook-${1#mem}" "base-3task-mem${1#mem}" "${SUNNYBROOK[@]}" ;;
    mem48px|mem2-48px|mem48px1m|mem2-48px1m)  # today's default memory (--memory-replay-pixels: a task of small
      # slices keeps more, chosen among 4 candidates per exemplar): the base's memory of 48 slices with the
      # hippocampus chosen again (the other tasks' choice is unchanged: copied); *1m: with 1,000,000 pixels
      local base=base-3task prefix=mem-sunnybrook tasks=("${BASE_TASKS[@]}") added_task=("${SUNNYBROOK[@]}")
      local suffix=${1#mem}; suffix=${suffix#2-}
      if [ "${1#mem2}" != "$1" ]; then
        base=base2-3task-mr prefix=mem2-mammo tasks=("${MR_TASKS[@]}") added_task=("${MAMMO[@]}")
      fi
      small_slices_memory "$base" "$suffix" "${tasks[@]}"
      added "$prefix-$suffix" "$base-mem$suffix" "${added_task[@]}" ;;
    mem2-48-hippocampus256)  # the small-image task with more exemplars (256 slices, 0.5 MB), the others' 48 kept
      run base2-3task-mr-mem48-hippocampus256 memory \
        --model "$RUNS/base2-3task-mr-mem48" --task "hippocampus=$DATA/msd_hippocampus" --memory-slices 256 --device cpu
      added mem2-mammo-48-hippocampus256 base2-3task-mr-mem48-hippocampus256 "${MAMMO[@]}" ;;
    mem48-distill-new)
      memory_of base-3task 48 "${BASE_TASKS[@]}"
      added mem-sunnybrook-48-distill-new base-3task-mem48 "${SUNNYBROOK[@]}" --distill-new-task 1 ;;
    mem2-48-distill-new)
      memory_of base2-3task-mr 48 "${MR_TASKS[@]}"
      added mem2-mammo-48-distill-new base2-3task-mr-mem48 "${MAMMO[@]}" --distill-new-task 1 ;;
    mem-update)  # Sunnybrook added without 20 of its cases, then updated with them: memory only
      memory_of base-3task 48 "${BASE_TASKS[@]}"
      local fewer; fewer=$RUNS/sunnybrook_lv-minus20
      without_cases "$DATA/sunnybrook_lv" 20 "$fewer"
      added mem-sunnybrook-minus20-48 base-3task-mem48 --task "sunnybrook=$fewer"
      added mem-sunnybrook-update-48 "mem-sunnybrook-minus20-48$SEEDED" "${SUNNYBROOK[@]}" ;;
    mem-update48px)  # the same with today's default memory
      small_slices_memory base-3task 48px "${BASE_TASKS[@]}"
      without_cases "$DATA/sunnybrook_lv" 20 "$RUNS/sunnybrook_lv-minus20"
      added mem-sunnybrook-minus20-48px base-3task-mem48px --task "sunnybrook=$RUNS/sunnybrook_lv-minus20"
      added mem-sunnybrook-update-48px "mem-sunnybrook-minus20-48px$SEEDED" "${SUNNYBROOK[@]}" ;;
    mem2-full) added mem2-mammo-full base2-3task-mr "${MAMMO[@]}" "${MR_REPLAY[@]}" ;;
    mem2-noreplay) added mem2-mammo-noreplay base2-3task-mr "${MAMMO[@]}" "${MR_REPLAY[@]}" --replay-cases 0 ;;
    mem2-16|mem2-48|mem2-128)
      memory_of base2-3task-mr "${1#mem2-}" "${MR_TASKS[@]}"
      added "mem2-mammo-${1#mem2-}" "base2-3task-mr-mem${1#mem2-}" "${MAMMO[@]}" ;;
    mem2-update)  # mammography added without 20 of its cases, then updated with them: memory only
      memory_of base2-3task-mr 48 "${MR_TASKS[@]}"
      local fewer; fewer=$RUNS/ddsm_mammo_tissue-minus20
      without_cases "$DATA/ddsm_mammo_tissue" 20 "$fewer"
      added mem2-mammo-minus20-48 base2-3task-mr-mem48 --task "mammo=$fewer"
      added mem2-mammo-update-48 "mem2-mammo-minus20-48$SEEDED" "${MAMMO[@]}" ;;
    base) base ;;
    base2) base2 ;;
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
