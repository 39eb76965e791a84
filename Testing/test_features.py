"""The network-feature function (labelshare.engine.features): pooled bottleneck features per window and per slice,
the same whether slices run together or one by one, and the hook gone afterwards."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from labelshare.core.config import NetworkConfig
from labelshare.engine.features import capture_bottleneck, pool, slice_features
from labelshare.engine.networks import build_network


@pytest.fixture(scope="module")
def network() -> nn.Module:
    torch.manual_seed(0)
    return build_network(NetworkConfig(out_channels=3, filters=[4, 8, 16])).eval()


def test_pool_is_mean_and_standard_deviation_per_channel():
    output = torch.arange(2 * 3 * 4, dtype=torch.float32).reshape(2, 3, 2, 2)
    pooled = pool(output)
    assert pooled.shape == (2, 6)
    assert torch.allclose(pooled[:, :3], output.flatten(2).mean(2))
    assert torch.allclose(pooled[:, 3:], output.flatten(2).std(2, unbiased=False))


def test_slice_features_average_the_windows_of_each_slice(network):
    images = torch.randn(3, 1, 40, 56)  # patch 16x16: several windows per slice
    together = slice_features(network, images, 0, (16, 16), windows_per_batch=5)
    assert together.shape == (3, 2 * 16)
    one_by_one = torch.cat([slice_features(network, images[i: i + 1], 0, (16, 16), windows_per_batch=2)
                            for i in range(3)])
    assert torch.allclose(together, one_by_one, atol=1e-5)
    assert not torch.allclose(together[0], together[1])  # different slices, different features
    with capture_bottleneck(network) as captured:
        network(images[:, :, :16, :16])
    assert torch.allclose(torch.cat(captured), slice_features(network, images[:, :, :16, :16], 0, (16, 16), 4))
    before = len(captured)
    network(images[:, :, :16, :16])
    assert len(captured) == before  # the hook is gone once the context is closed


def test_a_network_without_a_bottleneck_is_refused():
    with pytest.raises(ValueError, match="no U-Net bottleneck"):
        with capture_bottleneck(nn.Conv2d(1, 2, 3)):
            pass
