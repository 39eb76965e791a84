"""LabelShare's experiments and benchmarks: everything that measures the product, apart from the product.

A project of its own (``benchmarks/pyproject.toml``: ``pip install -e benchmarks/``, which ``make test`` does; it
adds matplotlib for the charts), never part of the engine's wheel or the Slicer extension. Its baselines (DoD-Net,
multi-channel) register into the engine's method registry (:mod:`.baselines`). Run one with
``labelshare-bench NAME [ARGUMENTS]`` (or ``python -m labelshare_benchmarks NAME``):

=========================== ==================================================================================
``methods``                 per-task vs multi-channel vs DoD-Net vs label-sharing variants on one split and
                            budget (docs/benchmark)
``segmentation-throughput`` the engine end to end vs the raw network forward on one volume
``training-throughput``     the engine's training step vs a raw training step
``batch-segmentation``      50 volumes in one ``labelshare segment`` call vs one call per volume
``apply-to-segments``       the Slicer module's Apply on slicer-core, first run and later runs
``cpu-efficiency``          float32 vs channels_last vs bfloat16 autocast vs torch.compile on the CPU
``window-size``             sliding-window overlaps and one window per whole slice: Dice and CPU time
``training-budget``         one recipe trained for several numbers of steps: Dice per budget, paired
                            differences and learning curves (docs/resolution)
``compare-recipes``         training recipes (plans, slice context, augmentation, steps) on one split: per-label
                            Dice, paired differences and learning curves (docs/resolution)
``cross-validation``        k-fold split files by patient, and recipes compared over the folds: pooled and
                            fold-wise Dice, paired differences (docs/resolution)
``compare-models``          two versions of a model on the same validation cases: per-label Dice, paired
                            differences per task, and with ``--group`` the look-alike read-outs
``incremental-summary``     tables and chart of the incremental-learning experiments (docs/incremental;
                            ``benchmarks/incremental/run_experiments.sh`` runs them)
``incremental-step-cost``   cost of one add-task step with and without distillation
``memory-precision``        how the rehearsal memory stores slices: bytes and prediction agreement of float and
                            8-bit storage (docs/incremental/memory.md)
``memory-gate``             the forgetting gate on a rehearsal memory's gate slices against the old tasks' full
                            validation cases: the change each sees (docs/incremental/memory.md)
``split-task``              a task with every structure cut in two (more labels than n*), for head expansion
``new-label-rate``          add-task of a small label beyond n* against the new channel's learning-rate scale
``annotation-campaign``     a simulated annotation campaign: uncertainty ranking vs random selection
                            (docs/annotation-queue)
``input-check``             the input check's AUROC per task and kind of input, the uncertainty map's voxel-wise
                            AUROC, and their cost on a warm segmentation (docs/input-check)
``robustness``              bad inputs and kills over every command and the worker, each outcome classified
                            (issue #11; exits 1 when any is a traceback, wrongly accepted, a hang or damage)
=========================== ==================================================================================

Each prints its numbers (and writes them where it says); none passes or fails on time.
"""

EXPERIMENTS = {
    "methods": "methods",
    "segmentation-throughput": "segmentation_throughput",
    "training-throughput": "training_throughput",
    "batch-segmentation": "batch_segmentation",
    "apply-to-segments": "apply_to_segments",
    "cpu-efficiency": "cpu_efficiency",
    "window-size": "window_size",
    "training-budget": "training_budget",
    "compare-models": "compare_models",
    "compare-recipes": "compare_recipes",
    "cross-validation": "cross_validation",
    "incremental-summary": "incremental.summarize",
    "memory-precision": "incremental.memory_precision",
    "memory-gate": "incremental.memory_gate",
    "incremental-step-cost": "incremental.step_cost",
    "split-task": "incremental.split_task",
    "new-label-rate": "incremental.new_label_rate",
    "annotation-campaign": "annotation_campaign",
    "input-check": "input_check",
    "robustness": "robustness_campaign",
}
