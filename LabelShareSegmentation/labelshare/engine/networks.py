"""Networks: an nnU-Net-like 2D U-Net (MONAI DynUNet) with optional task conditioning.

Every network takes ``(images, task_index)`` and returns logits ``(B, out_channels, H, W)``; ``task_index`` is a
LongTensor of the task of each sample and is ignored by unconditioned networks. Which output channels belong to
which task is decided by :mod:`labelshare.core.layouts`, not here.

Conditioning choices of the engine's U-Net (``labelshare.core.config.NetworkConfig.conditioning``):
``none``            the paper's label-sharing network: the task is not an input.
``task_channels``   the task as one-hot constant input planes (beyond the paper; the user picks the task anyway).
Other conditionings are built by the network class their method names (:func:`labelshare.core.methods.network_class`;
the benchmarks' DoD-Net is one).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from monai.networks.nets import DynUNet
from torch import nn

from ..core.config import NetworkConfig, unet_strides
from ..core.methods import network_class

def dynunet(in_channels: int, out_channels: int, filters: list[int]) -> DynUNet:
    """The U-Net of every LabelShare network (MONAI DynUNet, 3x3 kernels, one level per filter count)."""
    strides = unet_strides(len(filters))  # the strides planning derives its patch multiple from
    return DynUNet(spatial_dims=2, in_channels=in_channels, out_channels=out_channels, kernel_size=[3] * len(filters),
                   strides=strides, upsample_kernel_size=strides[1:], filters=list(filters))


class SegmentationNet(nn.Module):
    """DynUNet whose input may carry the task as one-hot planes."""

    def __init__(self, config: NetworkConfig):
        super().__init__()
        self.config = config
        extra = config.n_tasks if config.conditioning == "task_channels" else 0
        self.unet = dynunet(config.in_channels + extra, config.out_channels, config.filters)

    def forward(self, images: torch.Tensor, task_index: torch.Tensor | None = None) -> torch.Tensor:
        if self.config.conditioning == "task_channels":
            if task_index is None:
                raise ValueError("this network is task-conditioned: pass task_index")
            planes = F.one_hot(task_index, self.config.n_tasks).to(images.dtype)[:, :, None, None]
            images = torch.cat([images, planes.expand(-1, -1, *images.shape[2:])], dim=1)
        return self.unet(images)


def build_network(config: NetworkConfig) -> nn.Module:
    """The network of ``config``: the engine's U-Net, or the class a registered method names for its conditioning."""
    return (network_class(config.conditioning) or SegmentationNet)(config)


def count_parameters(network: nn.Module) -> int:
    return sum(p.numel() for p in network.parameters())


def output_layer(network: nn.Module) -> nn.Conv2d:
    """The 1x1 convolution that gives a label-sharing network's output channels (one row per channel)."""
    return network.unet.output_block.conv.conv


def expand_output_channels(network: nn.Module, starts: Sequence[tuple[int, float]]) -> None:
    """Append one output channel per entry of ``starts`` to an unconditioned or task-channel network, in place.

    Existing channels keep their weights, so the old tasks' predictions are unchanged at the start. New channel i
    starts as a copy of channel ``starts[i][0]`` with its bias shifted by ``starts[i][1]`` (a negative shift makes
    it start below its source: e.g. the background channel shifted by the log prior odds of the new label, so the
    channel begins from features that already separate foreground from background, at the label's frequency).
    """
    if not isinstance(network, SegmentationNet):
        raise ValueError("output expansion is implemented for label-sharing networks (SegmentationNet)")
    if not starts:
        return
    old = output_layer(network)
    out_channels = old.out_channels + len(starts)
    new = nn.Conv2d(old.in_channels, out_channels, kernel_size=1).to(old.weight.device, old.weight.dtype)
    with torch.no_grad():
        new.weight[: old.out_channels] = old.weight
        new.bias[: old.out_channels] = old.bias
        for offset, (source, shift) in enumerate(starts, start=old.out_channels):
            if not 0 <= source < old.out_channels:
                raise ValueError(f"channel {source} to copy does not exist ({old.out_channels} channels)")
            new.weight[offset] = old.weight[source]
            new.bias[offset] = old.bias[source] + shift
    network.unet.output_block.conv.conv = new
    network.unet.out_channels = out_channels
    network.config.out_channels = out_channels


def expand_task_inputs(network: nn.Module, n_tasks: int) -> None:
    """Grow the task code of a task-conditioned network to ``n_tasks``; new tasks start with zero weights, in place."""
    config = network.config
    if n_tasks < config.n_tasks:
        raise ValueError(f"cannot shrink the task code from {config.n_tasks} to {n_tasks} tasks")
    added = n_tasks - config.n_tasks
    if added == 0:
        return
    if config.conditioning == "task_channels":
        old = network.unet.input_block.conv1.conv
        new = nn.Conv2d(old.in_channels + added, old.out_channels, kernel_size=old.kernel_size, stride=old.stride,
                        padding=old.padding, bias=old.bias is not None).to(old.weight.device, old.weight.dtype)
        with torch.no_grad():
            new.weight.zero_()
            new.weight[:, : old.in_channels] = old.weight
            if old.bias is not None:
                new.bias.copy_(old.bias)
        network.unet.input_block.conv1.conv = new
    elif config.conditioning != "none":  # an unconditioned network only counts its tasks
        raise ValueError(f"the task code of a {config.conditioning!r} network does not grow here")
    config.n_tasks = n_tasks

