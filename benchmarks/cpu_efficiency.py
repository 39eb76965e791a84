"""CPU execution options for training and inference: float32 vs channels_last vs bfloat16 autocast vs
torch.compile, on the default network (MONAI DynUNet, 16-256 filters), interleaved so that all see the same load.

    labelshare-bench cpu-efficiency [--patch 192 192] [--batch-size 16] [--rounds 3] [--steps 5]

Prints milliseconds per training step (forward, backward, AdamW) and per inference forward (no gradients) for each
option, and the largest difference of bf16 logits from float32 logits on the same input (a speed-up that changes
the output is not free). Whether an option is kept is decided here, by these numbers, not assumed.
"""

from __future__ import annotations

import argparse
import time

import torch

from labelshare.config import NetworkConfig
from labelshare.networks import build_network

from .common import machine

OPTIONS = ("float32", "channels_last", "bfloat16", "compile")


def _network(option: str, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    network = build_network(NetworkConfig(out_channels=4))
    if option == "channels_last":
        network = network.to(memory_format=torch.channels_last)
    if option == "compile":
        network = torch.compile(network)
    return network


def _inputs(option: str, images: torch.Tensor) -> torch.Tensor:
    return images.contiguous(memory_format=torch.channels_last) if option == "channels_last" else images


def _autocast(option: str):
    return torch.autocast("cpu", dtype=torch.bfloat16, enabled=option == "bfloat16")


def time_training(option: str, network: torch.nn.Module, images: torch.Tensor, targets: torch.Tensor,
                  steps: int) -> float:
    optimizer = torch.optim.AdamW(network.parameters(), lr=1e-3)
    task = torch.zeros(images.shape[0], dtype=torch.int64)
    start = time.perf_counter()
    for _ in range(steps):
        with _autocast(option):
            logits = network(_inputs(option, images), task)
        loss = torch.nn.functional.cross_entropy(logits.float(), targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return 1000 * (time.perf_counter() - start) / steps


@torch.no_grad()
def time_inference(option: str, network: torch.nn.Module, images: torch.Tensor, steps: int) -> float:
    task = torch.zeros(images.shape[0], dtype=torch.int64)
    start = time.perf_counter()
    for _ in range(steps):
        with _autocast(option):
            network(_inputs(option, images), task)
    return 1000 * (time.perf_counter() - start) / steps


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--patch", type=int, nargs=2, default=(192, 192), metavar=("H", "W"))
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--options", nargs="+", default=list(OPTIONS), choices=OPTIONS)
    args = parser.parse_args(argv)
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(args.batch_size, 1, *args.patch, generator=generator)
    targets = torch.randint(0, 4, (args.batch_size, *args.patch), generator=generator)
    networks = {option: _network(option) for option in args.options}
    for option, network in networks.items():  # warm-up (compilation, allocator)
        time_training(option, network, images, targets, 1)
        time_inference(option, network.eval(), images, 1)
        network.train()
    training = {option: [] for option in args.options}
    inference = {option: [] for option in args.options}
    for _ in range(args.rounds):
        for option, network in networks.items():
            training[option].append(time_training(option, network.train(), images, targets, args.steps))
            inference[option].append(time_inference(option, network.eval(), images, args.steps))
    reference = _network("float32").eval()
    with torch.no_grad():
        exact = reference(images[:2], torch.zeros(2, dtype=torch.int64))
        with _autocast("bfloat16"):
            approximate = reference(images[:2], torch.zeros(2, dtype=torch.int64)).float()
    print(f"machine: {machine()}; batch {args.batch_size} of {args.patch[0]}x{args.patch[1]}; median of "
          f"{args.rounds} rounds of {args.steps} steps")
    print("| option | training ms/step | vs float32 | inference ms/batch | vs float32 |")
    print("|---|---|---|---|---|")
    base_train = sorted(training["float32"])[len(training["float32"]) // 2] if "float32" in training else None
    base_infer = sorted(inference["float32"])[len(inference["float32"]) // 2] if "float32" in inference else None
    for option in args.options:
        train_ms = sorted(training[option])[len(training[option]) // 2]
        infer_ms = sorted(inference[option])[len(inference[option]) // 2]
        ratio_train = f"{base_train / train_ms:.2f}x" if base_train else "-"
        ratio_infer = f"{base_infer / infer_ms:.2f}x" if base_infer else "-"
        print(f"| {option} | {train_ms:.0f} | {ratio_train} | {infer_ms:.0f} | {ratio_infer} |")
    print(f"bfloat16 autocast: largest logit difference from float32 {float((approximate - exact).abs().max()):.3f} "
          f"(logits span {float(exact.max() - exact.min()):.2f})")


if __name__ == "__main__":
    main()
