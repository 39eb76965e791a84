"""DoD-Net (Zhang et al., CVPR 2021) adapted to 2D multi-label tasks, a baseline of the method comparison: a shared
encoder-decoder (the engine's MONAI DynUNet) and a controller that maps the pooled bottleneck features and the
one-hot task code to the weights of three 1x1 convolutions, applied per sample to the decoder features. Registered
as the network of conditioning ``dodnet`` by :mod:`.baselines`."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from labelshare.core.config import NetworkConfig
from labelshare.engine.networks import dynunet

HEAD_CHANNELS = 8


class DoDNet(nn.Module):
    """Shared encoder-decoder + task-conditioned dynamic 1x1 convolution head; takes ``(images, task_index)``."""

    def __init__(self, config: NetworkConfig):
        super().__init__()
        self.config = config
        self.unet = dynunet(config.in_channels, config.filters[0], config.filters)
        self.unet.output_block = nn.Identity()
        self.feature_reduction = nn.Sequential(
            nn.GroupNorm(4 if config.filters[0] % 4 == 0 else 1, config.filters[0]), nn.ReLU(inplace=True),
            nn.Conv2d(config.filters[0], HEAD_CHANNELS, kernel_size=1))
        c, o = HEAD_CHANNELS, config.out_channels
        self.layer_shapes = [(c, c), (c, c), (o, c)]
        n_params = sum(out * inp + out for out, inp in self.layer_shapes)
        self.controller = nn.Linear(config.filters[-1] + config.n_tasks, n_params)
        self._bottleneck_features: torch.Tensor | None = None
        self.unet.bottleneck.register_forward_hook(self._keep_bottleneck)

    def _keep_bottleneck(self, module, inputs, output):
        self._bottleneck_features = output

    def forward(self, images: torch.Tensor, task_index: torch.Tensor | None = None) -> torch.Tensor:
        if task_index is None:
            raise ValueError("DoD-Net needs the task of every sample: pass task_index")
        features = self.feature_reduction(self.unet(images))
        pooled = self._bottleneck_features.mean(dim=(2, 3))
        self._bottleneck_features = None
        code = F.one_hot(task_index, self.config.n_tasks).to(pooled.dtype)
        params = self.controller(torch.cat([pooled, code], dim=1))
        x = features
        offset = 0
        for layer, (out, inp) in enumerate(self.layer_shapes):
            weight = params[:, offset: offset + out * inp].view(-1, out, inp)
            offset += out * inp
            bias = params[:, offset: offset + out]
            offset += out
            x = torch.einsum("boc,bchw->bohw", weight, x) + bias[:, :, None, None]
            if layer < len(self.layer_shapes) - 1:
                x = F.relu(x)
        return x
