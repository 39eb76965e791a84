"""What the network sees in a slice, as a vector: the pooled bottleneck features of a LabelShare U-Net.

Per window the network runs on, the output of the U-Net's bottleneck (its coarsest, most abstract layer) is pooled
over space into its mean and standard deviation per channel (``2 x filters[-1]`` numbers: 512 for the default
network). A slice's features are the mean over the sliding windows inference runs on it (:func:`slice_features`), so
they describe the slice as segmentation sees it, at the task's plan resolution and by the plan's windows.

One mechanism for every user: :func:`capture_bottleneck` records the pooled features of every forward pass while it is
open (segmentation can collect them from the windows it runs anyway), and :func:`slice_features` runs the windows of
a batch of slices itself. The rehearsal memory chooses its exemplars on them (:mod:`labelshare.engine.memory`);
an input check can compare an image's features with statistics of the training data.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import nn

from .slices import ENGINE_WINDOWS, Windows, window_logits


def bottleneck_of(network: nn.Module) -> nn.Module:
    """The bottleneck block of a LabelShare U-Net (MONAI DynUNet); ValueError for a network without one."""
    bottleneck = getattr(getattr(network, "unet", None), "bottleneck", None)
    if bottleneck is None:
        raise ValueError(f"{type(network).__name__} has no U-Net bottleneck to take features from")
    return bottleneck


def pool(bottleneck_output: torch.Tensor) -> torch.Tensor:
    """(n, C, h, w) bottleneck output -> (n, 2C): per channel the mean and the standard deviation over space."""
    flat = bottleneck_output.float().flatten(2)
    return torch.cat([flat.mean(dim=2), flat.std(dim=2, unbiased=False)], dim=1)


@contextmanager
def capture_bottleneck(network: nn.Module, pooling: Callable[[torch.Tensor], torch.Tensor] = pool
                       ) -> Iterator[list[torch.Tensor]]:
    """While open, every forward pass of ``network`` appends the pooled features of its windows, (w, 2C) on the CPU,
    to the yielded list, in the order the windows ran (``pooling``: what a window's bottleneck output becomes
    instead of :func:`pool`'s features; the input check adds where they lie in the window).

    >>> with capture_bottleneck(model.network) as captured:          # doctest: +SKIP
    ...     labels = segmenter.segment(image, "acdc")
    >>> features = torch.cat(captured)                                # one row per window
    """
    captured: list[torch.Tensor] = []
    handle = bottleneck_of(network).register_forward_hook(
        lambda module, inputs, output: captured.append(pooling(output.detach()).cpu()))
    try:
        yield captured
    finally:
        handle.remove()


@torch.no_grad()
def slice_features(network: nn.Module, images: torch.Tensor, task_index: int, patch: Sequence[int],
                   windows_per_batch: int, autocast_dtype: torch.dtype | None = None,
                   windows: Windows = ENGINE_WINDOWS) -> torch.Tensor:
    """(n, 2C) features of (n, c, H, W) slices of one shape at a task's plan resolution: the pooled bottleneck
    features of each of the slice's sliding windows (``patch``: the plan's), averaged over its windows.

    Every slice of the batch has the same windows, and MONAI runs them slice by slice (all windows of the first
    slice, then the second...), so the captured windows are (n, windows per slice) in order."""
    network.eval()
    with capture_bottleneck(network) as captured:
        window_logits(network, images, task_index, patch, windows_per_batch, autocast_dtype, windows)
    per_window = torch.cat(captured)
    if per_window.shape[0] % images.shape[0]:
        raise RuntimeError(f"{per_window.shape[0]} windows for {images.shape[0]} slices: not the same windows per "
                           "slice")
    return per_window.reshape(images.shape[0], -1, per_window.shape[1]).mean(dim=1)
