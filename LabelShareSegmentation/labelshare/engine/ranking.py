"""``labelshare rank``: which unlabelled images an annotator should correct next, the most uncertain first.

Every image is segmented as ``labelshare segment`` would (the same readers, slices, plans and sliding windows,
one model load for all images, the next image read while the current one is scored) and scored by how unsure the
model is about it:

``entropy``
    the mean softmax entropy (divided by its maximum, log of the task's channels, so 0-1) over a band around the
    predicted label boundaries (the thick boundaries of every slice's prediction: SciPy's grey dilation differs from
    its grey erosion over the 4-neighbourhood). Where the model is
    sure, the probability drops from 1 to 0 within a pixel and the band's entropy is low; where the image is
    ambiguous the transition is wide and the band's entropy high. An image with no predicted label has no band: its
    score is the mean entropy over the whole image. Costs nothing beyond the segmentation.
``tta``
    1 - the mean Dice, over the labels either prediction has, between the prediction of the image and that of its
    left-right mirror image flipped back (test-time augmentation: only the flip training used, so a lateralised task
    refuses it, the rule of ``segment --tta``: :func:`labelshare.core.config.check_mirroring`). Twice the network time.
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

import math
import time

import numpy as np
from scipy import ndimage

from ..core.config import RankConfig
from ..core.errors import DataError
from ..core.inputs import Inputs
from ..core.progress import Progress
from ..core.ranking_table import RankedCase, RankFailure, Ranking
from .inference import Segmenter
from .models import Model
from .segment_run import eta_seconds, failure_reason, read_ahead

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


class BoundaryEntropy:
    """``entropy``: the mean softmax entropy (divided by its maximum) in a band around the predicted label boundaries
    of every slice, or over the whole image when nothing is predicted."""

    mirror = False

    def __init__(self, label_ids: list[int]):
        self.band_entropy = self.band_voxels = self.all_entropy = self.all_voxels = 0.0

    def add(self, prediction, predicted: np.ndarray, labels_of) -> None:
        probabilities = prediction.probabilities
        entropy = -(probabilities * probabilities.clamp_min(1e-12).log()).sum(dim=1)
        entropy = (entropy / math.log(probabilities.shape[1])).cpu().numpy()
        # thick boundaries in every slice's plane: where a pixel's 4-neighbourhood holds another label
        plane = ndimage.generate_binary_structure(2, 1)[np.newaxis]
        band = ndimage.grey_dilation(predicted, footprint=plane) != ndimage.grey_erosion(predicted, footprint=plane)
        self.band_entropy += float(entropy[band].sum())
        self.band_voxels += float(band.sum())
        self.all_entropy += float(entropy.sum())
        self.all_voxels += entropy.size

    def value(self) -> float:
        if self.band_voxels:
            return self.band_entropy / self.band_voxels
        return self.all_entropy / max(self.all_voxels, 1.0)


class MirrorDisagreement:
    """``tta``: 1 - the mean Dice, over the labels either view predicts, between the plain and the mirrored view."""

    mirror = True

    def __init__(self, label_ids: list[int]):
        self.label_ids = label_ids
        self.overlap = np.zeros((len(label_ids), 2))  # per label: voxels in both views, in either view (summed)

    def add(self, prediction, predicted: np.ndarray, labels_of) -> None:
        plain, mirrored = (labels_of(view) for view in prediction.views)
        for row, label_id in enumerate(self.label_ids):
            in_plain, in_mirrored = plain == label_id, mirrored == label_id
            self.overlap[row] += (np.count_nonzero(in_plain & in_mirrored),
                                  np.count_nonzero(in_plain) + np.count_nonzero(in_mirrored))

    def value(self) -> float:
        present = self.overlap[:, 1] > 0
        if not present.any():
            return 0.0
        return 1.0 - float(np.mean(2 * self.overlap[present, 0] / self.overlap[present, 1]))


# the scores of RankConfig's --score (``auto`` picks one of them per task: RankConfig.score_for), by name
SCORES = {"entropy": BoundaryEntropy, "tta": MirrorDisagreement}


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
