"""Segmentation metrics from MONAI, with one convention for empty structures.

Per case and label: Dice and the 95th-percentile Hausdorff distance (HD95, in mm when spacing is known, else
pixels). A label absent from both reference and prediction gives NaN for both metrics (excluded from means, as
in nnU-Net); absent from only one of them gives Dice 0 and HD95 NaN (undefined).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
import torch
from monai.metrics import compute_dice, compute_hausdorff_distance


def _one_hot(array: np.ndarray, label_ids: Sequence[int]) -> torch.Tensor:
    tensor = torch.from_numpy(np.ascontiguousarray(array))
    return torch.stack([tensor == int(i) for i in label_ids])[None].float()


def dice_per_label(prediction: np.ndarray, reference: np.ndarray, label_ids: Sequence[int]) -> dict[int, float]:
    """Dice of each label id between two label arrays of one case (any dimensionality)."""
    if prediction.shape != reference.shape:
        raise ValueError(f"prediction shape {prediction.shape} differs from reference shape {reference.shape}")
    pred, ref = _one_hot(prediction, label_ids), _one_hot(reference, label_ids)
    values = compute_dice(pred, ref, include_background=True, ignore_empty=False)[0].tolist()
    result = {}
    for label_id, value, p, r in zip(label_ids, values, pred[0], ref[0], strict=True):
        both_empty = not bool(p.any()) and not bool(r.any())
        result[int(label_id)] = float("nan") if both_empty else float(value)
    return result


def hd95_per_label(prediction: np.ndarray, reference: np.ndarray, label_ids: Sequence[int],
                   spacing: Sequence[float] | None = None) -> dict[int, float]:
    """HD95 of each label id; ``spacing`` in the array's axis order."""
    pred, ref = _one_hot(prediction, label_ids), _one_hot(reference, label_ids)
    result = {}
    for index, label_id in enumerate(label_ids):
        if not bool(pred[0, index].any()) or not bool(ref[0, index].any()):
            result[int(label_id)] = float("nan")
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            value = compute_hausdorff_distance(pred[:, index: index + 1], ref[:, index: index + 1],
                                               include_background=True, percentile=95,
                                               spacing=list(spacing) if spacing is not None else None)
        result[int(label_id)] = float(value.reshape(-1)[0])
    return result
