"""CPU execution options for training and inference: float32 vs channels_last vs bfloat16 autocast vs
torch.compile, and for inference only TorchScript (traced, frozen, optimised for inference) and ONNX Runtime, on
the default network (MONAI DynUNet, 16-256 filters), interleaved so that all see the same load.

    labelshare-bench cpu-efficiency [--patch 192 192] [--batch-size 16] [--rounds 3] [--steps 5] [--options ...]

Prints milliseconds per training step (forward, backward, AdamW) and per inference forward (no gradients) for each
option, and the largest difference of each option's logits from float32 logits on the same input (a speed-up that
changes the output is not free). Whether an option is kept is decided here, by these numbers, not assumed.
``onnxruntime`` needs ``pip install onnx onnxruntime`` (not dependencies of LabelShare).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

from labelshare.core.config import NetworkConfig
from labelshare.engine.networks import build_network

from .common import machine

TRAINING_OPTIONS = ("float32", "channels_last", "bfloat16", "compile")
INFERENCE_ONLY_OPTIONS = ("torchscript", "onnxruntime")
OPTIONS = TRAINING_OPTIONS + INFERENCE_ONLY_OPTIONS


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


Predictor = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _predictor(option: str, network: torch.nn.Module, images: torch.Tensor, folder: Path) -> Predictor:
    """Logits of (images, task index) with the option's inference path."""
    task = torch.zeros(images.shape[0], dtype=torch.int64)
    network.eval()
    if option == "torchscript":
        with torch.no_grad():
            scripted = torch.jit.optimize_for_inference(torch.jit.freeze(torch.jit.trace(network, (images, task))))
        return scripted
    if option == "onnxruntime":
        import onnxruntime

        path = folder / "network.onnx"
        torch.onnx.export(network, (images, task), path, input_names=["images", "task"], output_names=["logits"],
                          dynamic_axes={"images": {0: "n", 2: "h", 3: "w"}, "task": {0: "n"}}, dynamo=False)
        settings = onnxruntime.SessionOptions()
        settings.intra_op_num_threads = torch.get_num_threads()
        session = onnxruntime.InferenceSession(str(path), settings, providers=["CPUExecutionProvider"])
        names = {item.name for item in session.get_inputs()}  # the export drops a task input the network ignores

        def run(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            feed = {"images": x.numpy(), "task": t.numpy()}
            return torch.from_numpy(session.run(None, {name: feed[name] for name in names})[0])
        return run

    def eager(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        with _autocast(option):
            return network(_inputs(option, x), t).float()
    return eager


@torch.no_grad()
def time_inference(predictor: Predictor, images: torch.Tensor, steps: int) -> float:
    task = torch.zeros(images.shape[0], dtype=torch.int64)
    start = time.perf_counter()
    for _ in range(steps):
        predictor(images, task)
    return 1000 * (time.perf_counter() - start) / steps


def median(values: list[float]) -> float:
    return sorted(values)[len(values) // 2]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--patch", type=int, nargs=2, default=(192, 192), metavar=("H", "W"))
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--options", nargs="+", default=list(TRAINING_OPTIONS), choices=OPTIONS)
    args = parser.parse_args(argv)
    if "onnxruntime" in args.options:
        try:
            import onnx  # noqa: F401  (torch.onnx.export needs it)
            import onnxruntime  # noqa: F401
        except ImportError as error:
            parser.error(f"--options onnxruntime: {error.name} is not installed (pip install onnx onnxruntime)")
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(args.batch_size, 1, *args.patch, generator=generator)
    targets = torch.randint(0, 4, (args.batch_size, *args.patch), generator=generator)
    trained = [option for option in args.options if option in TRAINING_OPTIONS]
    with tempfile.TemporaryDirectory() as folder:
        networks = {option: _network(option if option in TRAINING_OPTIONS else "float32") for option in args.options}
        predictors = {option: _predictor(option, network, images, Path(folder))
                      for option, network in networks.items()}
        for option in trained:  # warm-up (compilation, allocator)
            time_training(option, networks[option].train(), images, targets, 1)
        for option, predictor in predictors.items():
            networks[option].eval()
            time_inference(predictor, images, 1)
        training = {option: [] for option in trained}
        inference = {option: [] for option in args.options}
        for _ in range(args.rounds):
            for option in args.options:
                if option in trained:
                    training[option].append(time_training(option, networks[option].train(), images, targets,
                                                          args.steps))
                networks[option].eval()
                inference[option].append(time_inference(predictors[option], images, args.steps))
        # every option's logits against float32 eager on the same weights (seed 0; compile changes no arithmetic)
        reference = _network("float32").eval()
        task = torch.zeros(images.shape[0], dtype=torch.int64)
        with torch.no_grad():
            exact = reference(images, task)
            differences = {option: float((_predictor(option, reference, images, Path(folder))(images, task).float()
                                          - exact).abs().max()) for option in args.options if option != "compile"}
    print(f"machine: {machine()}; batch {args.batch_size} of {args.patch[0]}x{args.patch[1]}; median of "
          f"{args.rounds} rounds of {args.steps} steps")
    print("| option | training ms/step | vs float32 | inference ms/batch | vs float32 | largest logit difference |")
    print("|---|---|---|---|---|---|")
    base_train = median(training["float32"]) if "float32" in training else None
    base_infer = median(inference["float32"]) if "float32" in inference else None
    for option in args.options:
        train_ms = median(training[option]) if option in training else None
        infer_ms = median(inference[option])
        ratio_train = f"{base_train / train_ms:.2f}x" if base_train and train_ms else "-"
        ratio_infer = f"{base_infer / infer_ms:.2f}x" if base_infer else "-"
        difference = f"{differences[option]:.2g}" if option in differences else "-"
        print(f"| {option} | {f'{train_ms:.0f}' if train_ms else '-'} | {ratio_train} | {infer_ms:.0f} | "
              f"{ratio_infer} | {difference} |")
    print(f"float32 logits span {float(exact.max() - exact.min()):.2f}")


if __name__ == "__main__":
    main()
