"""Incremental learning: add a task to a trained label-sharing model, or update one of its tasks with more cases,
without forgetting the tasks it already knows (``labelshare add-task``, :func:`add_task`).

The steps, one module each: :mod:`.mapping` (1, 2), :mod:`.trainer` (3), :mod:`.gate` (4, 5); :mod:`.run` ties
them together.

1. **Mapping.** The new task's label statistics are computed on its training cases and each of its labels gets a
   shared label, honouring both constraints of the paper (a task label maps to exactly one shared label; a shared
   label holds at most one label of each task). Strategies: ``size`` (the paper: the k-th largest label goes to
   shared label k) and ``overlap`` (the current model segments the new task's training images; each label goes to
   the shared label whose prediction overlaps it most, as Dice, by an optimal one-to-one assignment; a label whose
   best overlap is below :data:`MIN_OVERLAP_DICE` takes the lowest free shared label in size order, or a new one).
   ``--map LABEL=SHARED`` pins labels by hand and the strategy places the rest. Old mappings never change.
2. **Expansion.** A task with more labels than n* extends the label space, and the output layer grows with it
   (:func:`labelshare.engine.networks.expand_output_channels`: old channels keep their weights, new ones start from the
   background channel); a task-conditioned network also gets an input for the new task.
3. **Training** continues from the old weights on the new task mixed with replay of the old tasks: exemplar cases
   read from the old tasks' folders, drawn from their training split only, and optionally distillation of the old
   model's outputs on the replayed slices. Every task gets the same share of each batch (the engine's sampler).
4. **Forgetting report and gate.** Every task of the old model is scored on its validation cases by the old and by
   the new model (per-case Dice at native resolution, mean over cases, then over labels; the old model's own
   ``metrics.json`` is reused for tasks whose validation cases and data are unchanged). When a task loses more
   than ``max_regression`` Dice points the new version is refused (:class:`RegressionRefused`, exit status 3)
   unless ``accept_regression``: the report is written beside the requested folder as ``<NEW>.forgetting.json``
   and ``.md``, and the trained candidate stays in ``.<NEW>.candidate`` so that the same command with
   ``--accept-regression`` publishes it without training again.
5. **Publishing.** The new folder holds ``forgetting.json``/``forgetting.md`` and a ``lineage.json`` with parent,
   operation, task, mapping, replay set, data fingerprints and the task folders used. The old folder is only read.

The old tasks' folders (needed for replay and for the report) come from ``--replay-task NAME=DIR``, else from the
absolute paths that the old model's ``lineage.json`` records under ``task_folders`` (every add-task writes them).
"""

from .gate import RegressionRefused
from .run import AddTaskResult, add_task

__all__ = ["AddTaskResult", "RegressionRefused", "add_task"]
