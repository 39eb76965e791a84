"""Loaded models (torch): weights in and out of a model folder, the device, and the model object inference uses.

The folder format itself (files, configuration, manifest, checks, listing) is :mod:`labelshare.core.modelfolder`, which
needs no torch.
"""

from __future__ import annotations

import copy
import os
import platform
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from safetensors.torch import load_model as load_safetensors_model
from safetensors.torch import save_model as save_safetensors_model

from ..core.config import parse_device
from ..core.errors import LabelShareError, ModelError
from ..core.fileio import atomic_path, atomic_write_json, atomic_write_text, not_written
from ..core.input_check import InputCheckStatistics
from ..core.labelspace import LabelSpace
from ..core.layouts import TaskHead, task_heads
from ..core.modelfolder import (MODEL_FORMAT, WEIGHTS_FILE, ModelConfig, folder_file, read_model_json, resolve_model,
                                verify_folder, write_manifest)
from .networks import build_network


@dataclass
class Model:
    """A loaded model version, ready for inference on ``device``."""

    path: Path | None
    config: ModelConfig
    labelspace: LabelSpace
    network: torch.nn.Module
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    # the input check's statistics (input_check.json): None for a model made before them, or not yet published
    input_statistics: InputCheckStatistics | None = None

    @cached_property
    def heads(self) -> dict[str, TaskHead]:
        """Every task's head, computed once (a loaded model's layout and label space do not change)."""
        return task_heads(self.config.layout, self.labelspace)

    @property
    def tasks(self) -> list[str]:
        return self.labelspace.task_names

    def task_labels(self, task: str) -> list[tuple[int, str]]:
        """(label id, label name) of a task, in id order; raises UnknownTaskError listing the known tasks."""
        return [(e.id, e.name) for e in sorted(self.labelspace.task(task).labels, key=lambda e: e.id)]

    def read_json(self, name: str, default: Any = None) -> Any:
        return read_model_json(self.path, name, default)

    def validation_cases(self, task: str) -> list[str]:
        """The validation cases of a task in the model's ``split.json`` ([] when it records none)."""
        split = self.read_json("split.json", {}) or {}
        try:
            cases = split.get("tasks", {}).get(task, {}).get("validation", [])
        except AttributeError:
            cases = None
        if not isinstance(cases, list) or not all(isinstance(case, str) for case in cases):
            raise ModelError(f"{self.path / 'split.json'}: malformed split (expected tasks -> validation -> names)")
        return cases


def save_weights(network: torch.nn.Module, path: Path, dtype: str = "float32") -> None:
    """Write weights atomically; aliased tensors (DynUNet's skip layers) are stored once. The file is loaded back
    and compared before it replaces anything; weights that are not finite (a diverged run) are refused."""
    target_dtype = {"float32": torch.float32, "float16": torch.float16}[dtype]
    to_save = copy.deepcopy(network).to(device="cpu", dtype=target_dtype)
    not_finite = non_finite_tensors(to_save)
    if not_finite:
        raise ModelError(f"{path}: not written: {len(not_finite)} weight tensors hold NaN or infinite values (e.g. "
                         f"{not_finite[0]}); the training diverged: lower --learning-rate"
                         + (" or store float32 weights" if dtype == "float16" else ""))
    expected = to_save.state_dict()
    with atomic_path(path, verify=lambda tmp: tensors_problem(tmp, expected)) as tmp:
        try:
            save_safetensors_model(to_save, str(tmp), metadata={"format": MODEL_FORMAT, "dtype": dtype})
        except SafetensorError as error:
            raise not_written(path, str(error)) from None


def tensors_problem(path: Path, expected: dict[str, torch.Tensor]) -> str | None:
    """What is wrong with a safetensors file just written (None: every tensor in it reads back as one of
    ``expected``; aliased tensors are stored once, so it may hold fewer)."""
    try:
        loaded = load_file(str(path))
    except SafetensorError as error:
        return f"the written tensors cannot be read back ({error})"
    if not loaded or any(name not in expected or not torch.equal(value, expected[name].cpu())
                         for name, value in loaded.items()):
        return "the written tensors do not read back as they were"
    return None


def non_finite_tensors(network: torch.nn.Module) -> list[str]:
    """Names of the floating-point parameters and buffers holding NaN or infinite values."""
    return [name for name, value in network.state_dict().items()
            if value.is_floating_point() and not bool(torch.isfinite(value).all())]


def load_weights(network: torch.nn.Module, path: Path) -> None:
    try:
        load_safetensors_model(network, str(path), strict=True)
    except SafetensorError as error:
        raise ModelError(f"{path}: weights cannot be read, the file is truncated or corrupt ({error})") from None
    except (RuntimeError, KeyError) as error:
        first_line = str(error).strip().splitlines()[0][:300] if str(error).strip() else type(error).__name__
        raise ModelError(f"{path}: weights do not match config.json ({first_line})") from None
    not_finite = non_finite_tensors(network)
    if not_finite:
        raise ModelError(f"{path}: {len(not_finite)} weight tensors hold NaN or infinite values (e.g. {not_finite[0]});"
                         " this model would segment nothing")


def resolve_device(device: str) -> torch.device:
    """The torch device for a device word (:func:`labelshare.core.config.parse_device`); an error when CUDA is asked
    for and there is none."""
    device = parse_device(device)
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise LabelShareError(f"device '{device}' requested but no CUDA GPU is available (use --device cpu or auto)")
    return torch.device(device)


def load_model(path: str | Path | None, device: str) -> Model:
    """Load and verify a model: a folder or a model's name (None: the bundled default model;
    :func:`labelshare.core.modelfolder.resolve_model`) onto ``device`` (``auto``, ``cpu``, ``cuda``, ``cuda:N``)."""
    path = resolve_model(path)
    config, space = verify_folder(path)
    network = build_network(copy.deepcopy(config.network))
    load_weights(network, folder_file(path, WEIGHTS_FILE))
    target = resolve_device(device)
    network.to(target).eval()
    return Model(path=path, config=config, labelspace=space, network=network, device=target,
                 input_statistics=InputCheckStatistics.read(path))


def save_model_folder(folder: Path, network: torch.nn.Module | None, config: ModelConfig, space: LabelSpace,
                      json_files: dict[str, Any] | None = None, text_files: dict[str, str] | None = None) -> None:
    """Write a complete model folder into ``folder`` (a staging folder), manifest last; ``network`` None: the
    weights file is there already (a version with its parent's weights, copied byte for byte)."""
    folder.mkdir(parents=True, exist_ok=True)
    if network is not None:
        save_weights(network, folder / WEIGHTS_FILE, config.weights_dtype)
    elif not (folder / WEIGHTS_FILE).is_file():
        raise ModelError(f"{folder / WEIGHTS_FILE}: missing; a model folder needs its weights")
    atomic_write_json(folder / "config.json", config.to_json())
    space.save(folder / "labelspace.json")
    for name, data in (json_files or {}).items():
        atomic_write_json(folder / name, data)
    for name, text in (text_files or {}).items():
        atomic_write_text(folder / name, text)
    write_manifest(folder)


def cpu_description() -> str:
    """The processor's name (/proc/cpuinfo on Linux), the widest vector instructions torch uses on it and the core
    count: CPU timings are only comparable on like machines (the same network ran 3x faster on an AVX-512 machine
    than on an AVX2 one of the same size)."""
    cpuinfo = Path("/proc/cpuinfo")
    names = [line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines()
             if line.startswith("model name")] if cpuinfo.is_file() else []
    name = names[0] if names else platform.processor() or platform.machine()
    return f"{name}, {torch.backends.cpu.get_cpu_capability()}, {os.cpu_count()} cores"


def environment_summary(world_size: int = 1) -> dict:
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"CPU ({cpu_description()})"
    return {"torch": torch.__version__, "python": platform.python_version(), "device": device,
            "world_size": world_size}
