"""How unsure the network is, from its predicted probabilities: per voxel (the uncertainty map of ``labelshare segment
--uncertainty``) and per case (the scores of ``labelshare rank``, also recorded in ``segment``'s sidecar).

Per voxel, the **normalised entropy** of the predicted probabilities: -sum p log p over the task's channels divided
by its maximum, the log of the number of channels, so 0 (one label certain) to 1 (all equally likely). With
test-time mirroring the probabilities are the two views' average, so where the views disagree the entropy rises.

Per case (:data:`SCORES`, by the name of ``labelshare rank --score``):

``entropy`` (:class:`BoundaryEntropy`)
    the mean normalised entropy over a band around the predicted label boundaries (the thick boundaries of every
    slice's prediction: SciPy's grey dilation differs from its grey erosion over the 4-neighbourhood). Where the
    model is sure, the probability drops from 1 to 0 within a pixel and the band's entropy is low; where the image is
    ambiguous the transition is wide and the band's entropy high. An image with no predicted label has no band: its
    score is the mean entropy over the whole image. Costs nothing beyond the segmentation.
``tta`` (:class:`MirrorDisagreement`)
    1 - the mean Dice, over the labels either prediction has, between the prediction of the image and that of its
    left-right mirror image flipped back (test-time augmentation: only the flip training used, so a lateralised task
    refuses it: :func:`labelshare.core.config.check_mirroring`). Twice the network time.

Each score is accumulated over an image's slice batches (:meth:`labelshare.engine.inference.Segmenter.predictions`):
``add(prediction, predicted, labels_of)`` per batch, ``value()`` at the end.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from scipy import ndimage


# what an uncertainty map holds (recorded in the label map's sidecar)
UNCERTAINTY_MEASURE = "normalised entropy of the predicted probabilities (0 certain, 1 every label equally likely)"


def normalised_entropy(probabilities: torch.Tensor) -> torch.Tensor:
    """(n, h, w) entropy of (n, K+1, h, w) probabilities divided by log(K+1): 0 certain, 1 all channels equal."""
    entropy = -(probabilities * probabilities.clamp_min(1e-12).log()).sum(dim=1)
    return (entropy / math.log(probabilities.shape[1])).clamp(0.0, 1.0)


class BoundaryEntropy:
    """``entropy``: the mean normalised entropy in a band around the predicted label boundaries of every slice, or
    over the whole image when nothing is predicted."""

    mirror = False

    def __init__(self, label_ids: list[int]):
        self.band_entropy = self.band_voxels = self.all_entropy = self.all_voxels = 0.0

    def add(self, prediction, predicted: np.ndarray, labels_of) -> None:
        entropy = normalised_entropy(prediction.probabilities).cpu().numpy()
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


# the per-case scores by name (RankConfig's --score; ``auto`` picks one of them per task: RankConfig.score_for)
SCORES = {"entropy": BoundaryEntropy, "tta": MirrorDisagreement}
