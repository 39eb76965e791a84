"""``labelshare rank``: which unlabelled images an annotator should correct next, the most uncertain first.

Every image is segmented as ``labelshare segment`` would (the same readers, slices, plans and sliding windows,
one model load for all images, the next image read while the current one is scored) and scored by how unsure the
model is about it, with one of the scores of :mod:`labelshare.engine.uncertainty` (:data:`SCORES`):

``entropy``
    the mean normalised softmax entropy (0-1) over a band around the predicted label boundaries; costs nothing
    beyond the segmentation.
``tta``
    1 - the mean Dice between the prediction of the image and that of its left-right mirror image flipped back
    (refused for a lateralised task, the rule of ``segment --tta``: :func:`labelshare.core.config.check_mirroring`).
    Twice the network time.
``auto`` (the default)
    ``tta`` where the task allows mirroring, else ``entropy``.

Monte-Carlo dropout is not offered: the networks (MONAI DynUNet, :mod:`labelshare.engine.networks`) have no dropout
layers, so dropout at test time would change nothing. Which score orders images best by the model's real error
was measured on hippocampus MR (docs/annotation-queue): the Spearman correlation between score and 1 - Dice over 44
unlabelled patients was 0.66 for ``tta`` and 0.17 for ``entropy`` (seed 0), hence ``auto``.

Usage::

    config = RankConfig(task="hippocampus")
    ranking = rank_cases(load_model("models/v3", "auto"), collect_inputs(["unlabelled/"]), config, Progress("human"))
    ranking.write("ranking.csv")            # rank, case, score, voxels per label, seconds, input
    ranking.cases[0].name                   # the image to annotate first

The table (its rows, the CSV, its reader for the Slicer modules) is :mod:`labelshare.core.ranking_table`.
"""

from __future__ import annotations

import time

import numpy as np

from ..core.config import RankConfig
from ..core.errors import DataError
from ..core.inputs import Inputs
from ..core.progress import Progress
from ..core.ranking_table import RankedCase, RankFailure, Ranking
from .inference import Segmenter
from .models import Model
from .segment_run import eta_seconds, failure_reason, read_ahead
from .uncertainty import SCORES

def rank_cases(model: Model, inputs: Inputs, config: RankConfig, progress: Progress | None = None) -> Ranking:
    """Score every image of ``inputs`` with the loaded ``model`` (:class:`labelshare.engine.models.Model`); one
    ``progress`` event per image (``case``, ``status`` done/failed, ``score``, ``reason``, ``seconds``, ``eta_s``; the
    message says only "failed": the caller reports the reasons once).

    An image that fails (unreadable, NaN voxels) is recorded in :attr:`Ranking.failures` and the others go on.
    :raises LabelShareError: for an unknown task, or ``tta`` on a lateralised task, before any image is read.
    """
    config.check()
    progress = progress or Progress("quiet")
    score = config.score_for(model.labelspace.task(config.task).lateralised)  # UnknownTaskError; tta refused for a
    # lateralised task
    segmenter = Segmenter(model, config.inference)
    labels = model.task_labels(config.task)
    ranking = Ranking(task=config.task, score=score, labels=[name for _, name in labels])
    images = inputs.images
    started = time.perf_counter()
    for index, (image, reading) in enumerate(zip(images, read_ahead(images), strict=True)):
        case_started = time.perf_counter()
        try:
            volume = reading.result()
            try:
                value, voxels = _score_image(segmenter, volume, config.task, score, labels)
            except DataError as error:
                raise DataError(f"{image.source}: {error}") from None
        except Exception as error:  # the image fails, the others go on
            failure = RankFailure(image.name, image.source, failure_reason(error))
            ranking.failures.append(failure)
            fields = {"status": "failed", "reason": failure.reason}
        else:
            case = RankedCase(image.name, image.source, value, voxels, time.perf_counter() - case_started)
            ranking.cases.append(case)
            fields = {"status": "done", "score": round(value, 6), "reason": ""}
        finished = index + 1
        progress.progress("ranking", finished / len(images), f"{finished}/{len(images)} {image.name}: "
                          + (f"score {fields['score']:.4f}" if fields["status"] == "done" else "failed"),
                          case=image.name, input=str(image.source), index=finished, cases=len(images),
                          seconds=round(time.perf_counter() - case_started, 3),
                          eta_s=eta_seconds(started, finished, len(images)), **fields)
    ranking.cases.sort(key=lambda case: (-case.score, case.name))
    return ranking


def _score_image(segmenter, image, task: str, score: str, labels: list[tuple[int, str]]
                 ) -> tuple[float, dict[str, int]]:
    """The image's ``score`` and its predicted voxels per label name, over the segmenter's predictions of its
    slices (:meth:`labelshare.engine.inference.Segmenter.predictions`)."""
    scorer = SCORES[score]([label_id for label_id, _ in labels])
    counts = np.zeros(max(label_id for label_id, _ in labels) + 1, dtype=np.int64)
    for prediction in segmenter.predictions(segmenter.slice_batches(image, task), task, scorer.mirror):
        predicted = segmenter.labels_of(prediction.probabilities, task)
        counts += np.bincount(predicted.ravel(), minlength=counts.size)
        scorer.add(prediction, predicted, lambda view: segmenter.labels_of(view, task))
    return float(scorer.value()), {name: int(counts[label_id]) for label_id, name in labels}
