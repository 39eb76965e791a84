"""Slices at a plan's resolution (:mod:`labelshare.core.plans`): resampling to the plan and back, and the network's
prediction over a slice with Gaussian-weighted sliding windows (MONAI). Training, validation, inference and the
overlap measurement of add-task all go through here, so they see slices exactly alike. The network's input of a
slice is its stack (the slice with its neighbours, for a plan of slice context:
:meth:`labelshare.core.plans.TaskPlan.stacks`), one input channel per slice.

Resampling is the plan's resampling scheme (:mod:`labelshare.core.preprocessing`). ``index-linear`` v1
(:class:`IndexLinearResampling`) works on slice stacks in index space (the in-plane grid is only scaled, its field of
view kept): images bilinearly (anti-aliased when shrinking), labels as one-hot maps resampled linearly then
argmax'ed (thin structures survive shrinking better than with nearest-neighbour), probabilities bilinearly back to
the slice's own grid.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from monai.inferers import sliding_window_inference

from ..core.layouts import TaskHead
from ..core.plans import TaskPlan

WINDOW_OVERLAP = 0.5  # nnU-Net's step of half a patch


@dataclass(frozen=True)
class Windows:
    """How the network's windows cover a slice: patch-sized windows (the plan's patch) overlapping by ``overlap``
    (the engine's: :data:`WINDOW_OVERLAP`), or with ``whole_slice`` one window over the whole slice, padded to the
    network's patch multiple (``labelshare-bench window-size`` compares them)."""

    overlap: float = WINDOW_OVERLAP
    whole_slice: bool = False

    def whole_slice_size(self, patch: Sequence[int], shape: Sequence[int], multiple: int) -> tuple[int, int]:
        """The one window over slices of ``shape``: at least the plan's ``patch``, sides multiples of ``multiple``."""
        return tuple(max(int(p), -(-int(s) // multiple) * multiple) for p, s in zip(patch, shape, strict=True))


ENGINE_WINDOWS = Windows()


def resample_images(images: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """(n, c, h, w) float images to (n, c, *shape), bilinear, anti-aliased when shrinking."""
    shape = tuple(int(s) for s in shape)
    if tuple(images.shape[-2:]) == shape:
        return images
    shrinking = shape[0] < images.shape[-2] or shape[1] < images.shape[-1]
    return F.interpolate(images, size=shape, mode="bilinear", align_corners=False, antialias=shrinking)


def resample_labels(labels: torch.Tensor, shape: Sequence[int], classes: int) -> torch.Tensor:
    """(n, h, w) integer labels (0..classes-1) to (n, *shape): one-hot maps resampled like images, then argmax."""
    shape = tuple(int(s) for s in shape)
    if tuple(labels.shape[-2:]) == shape:
        return labels
    one_hot = F.one_hot(labels.long(), classes).permute(0, 3, 1, 2).float()
    return resample_images(one_hot, shape).max(dim=1).indices


class IndexLinearResampling:
    """Resampling scheme ``index-linear`` v1 (:data:`labelshare.core.preprocessing.RESAMPLINGS`)."""

    images = staticmethod(resample_images)
    labels = staticmethod(resample_labels)


def to_plan(images: np.ndarray, spacing: Sequence[float], plan: TaskPlan,
            device: torch.device | str) -> torch.Tensor:
    """(n, c, h, w) normalised slice stacks as network input (n, c, H, W) at the plan's resolution."""
    tensor = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32)).to(device)
    return plan.preprocessing.resampling_scheme.images(tensor, plan.target_shape(images.shape[-2:], spacing))


def pad_to_patch(images: torch.Tensor, patch: Sequence[int]) -> tuple[torch.Tensor, tuple[slice, slice]]:
    """Pad (n, c, H, W) symmetrically to at least ``patch`` with each image's minimum (the darkest background);
    returns the padded images and the region of the original."""
    missing = [max(0, int(p) - s) for p, s in zip(patch, images.shape[-2:], strict=True)]
    if not any(missing):
        return images, (slice(None), slice(None))
    top, left = missing[0] // 2, missing[1] // 2
    low = images.amin(dim=(1, 2, 3), keepdim=True)
    padded = low.expand(images.shape[0], images.shape[1], images.shape[2] + missing[0],
                        images.shape[3] + missing[1]).clone()
    padded[:, :, top: top + images.shape[2], left: left + images.shape[3]] = images
    return padded, (slice(top, top + images.shape[2]), slice(left, left + images.shape[3]))


def window_logits(network: torch.nn.Module, images: torch.Tensor, task_index: int, patch: Sequence[int],
                  windows_per_batch: int, autocast_dtype: torch.dtype | None = None,
                  windows: Windows = ENGINE_WINDOWS) -> torch.Tensor:
    """Logits (n, C, H, W) of the network over (n, c, H, W) images with Gaussian-weighted windows of ``patch``
    (half-patch steps; ``windows``: other choices); an image smaller than the window is padded first, so it is one
    window."""
    if windows.whole_slice:
        patch = windows.whole_slice_size(patch, images.shape[-2:], network.config.patch_multiple)
    padded, region = pad_to_patch(images, patch)

    def predict(windows: torch.Tensor) -> torch.Tensor:
        index = torch.full((windows.shape[0],), task_index, device=windows.device, dtype=torch.int64)
        if autocast_dtype is None:
            return network(windows, index).float()
        with torch.autocast(windows.device.type, dtype=autocast_dtype):
            return network(windows, index).float()

    logits = sliding_window_inference(padded, roi_size=tuple(int(p) for p in patch),
                                      sw_batch_size=windows_per_batch, predictor=predict, overlap=windows.overlap,
                                      mode="gaussian")
    return logits[:, :, region[0], region[1]]


def head_probabilities(network: torch.nn.Module, images: torch.Tensor, head: TaskHead, plan: TaskPlan,
                       mirror: bool, windows_per_batch: int, autocast_dtype: torch.dtype | None = None
                       ) -> torch.Tensor:
    """Softmax over the task's channels (n, K+1, H, W) at the plan's resolution; ``mirror`` averages with the
    prediction of the left-right mirrored images (test-time augmentation; only for tasks that are not
    lateralised, the flip training used)."""
    views = head_probability_views(network, images, head, plan, mirror, windows_per_batch, autocast_dtype)
    return views[0] if len(views) == 1 else (views[0] + views[1]) / 2


def head_probability_views(network: torch.nn.Module, images: torch.Tensor, head: TaskHead, plan: TaskPlan,
                           mirror: bool, windows_per_batch: int, autocast_dtype: torch.dtype | None = None,
                           windows: Windows = ENGINE_WINDOWS,
                           plain_view: Callable[[], AbstractContextManager] = nullcontext) -> list[torch.Tensor]:
    """The softmax of :func:`head_probabilities` per view, not averaged: the plain prediction and, with ``mirror``,
    the mirrored images' prediction flipped back (ranking measures how much the two disagree). The plain view's
    windows run inside ``plain_view()`` (the input check records their features there)."""
    def once(batch: torch.Tensor) -> torch.Tensor:
        logits = window_logits(network, batch, head.index, plan.patch_size, windows_per_batch, autocast_dtype,
                               windows)
        return logits[:, head.channels].softmax(dim=1)

    with plain_view():
        views = [once(images)]
    if mirror:
        views.append(once(images.flip(-1)).flip(-1))
    return views
