"""Model folders: weights in safetensors, configuration, label space, card, lineage, and the model store.

A model folder (one immutable *version*)::

    model.safetensors     network weights (safetensors: loading never unpickles anything)
    config.json           format, method, output layout, network and preprocessing configuration
    labelspace.json       the shared label space (tasks, labels, statistics, mapping both ways)
    manifest.json         sha256 of every file above and below; loading refuses a folder that does not match
    split.json            patient-wise training/validation split per task
    metrics.json          validation Dice/HD95 per task and label
    training_log.jsonl    one JSON object per epoch
    lineage.json          parent model, tasks added, hashes of the data used, command line
    README.md             model card

Folders are written under a staging name and renamed into place when complete (see :mod:`labelshare.fileio`).
"""

from __future__ import annotations

import copy
import hashlib
import os
import platform
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from collections.abc import Iterable

import torch
from safetensors import SafetensorError
from safetensors.torch import load_model as load_safetensors_model
from safetensors.torch import save_model as save_safetensors_model

from .errors import LabelShareError, LabelSpaceError, ModelError
from .fileio import atomic_path, atomic_write_json, atomic_write_text, read_json, sha256_file
from .heads import LAYOUTS, TaskHead, out_channels, task_heads
from .labelspace import LabelSpace
from .networks import NetworkConfig, build_network
from .paths import BUNDLED_MODELS_DIR, model_dir_or_default, user_models_dir

MODEL_FORMAT = "labelshare.model"
MODEL_FORMAT_VERSION = 1
WEIGHTS_FILE = "model.safetensors"
REQUIRED_FILES = ("config.json", "labelspace.json", WEIGHTS_FILE, "manifest.json")
METHODS = ("label-sharing", "label-sharing-task-channels", "per-task", "multi-channel", "dodnet")


@dataclass
class PreprocessingConfig:
    """How an image becomes network input; recorded so that inference repeats it exactly."""

    image_size: int = 128
    normalisation: str = "per-case percentile clip 0.5/99.5, then z-score"
    slicing: str = "through-plane axis = largest spacing (ties: last image axis); 2D or single-slice = projection"
    resize: str = "each slice resized to image_size x image_size (bilinear image, nearest label)"


@dataclass
class ModelConfig:
    method: str
    layout: str
    network: NetworkConfig
    preprocessing: PreprocessingConfig = field(default_factory=PreprocessingConfig)
    weights_dtype: str = "float32"

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError(f"unknown method {self.method!r}; known: {', '.join(METHODS)}")
        if self.layout not in LAYOUTS:
            raise ValueError(f"unknown output layout {self.layout!r}")

    def to_json(self) -> dict:
        return {"format": MODEL_FORMAT, "format_version": MODEL_FORMAT_VERSION, "method": self.method,
                "layout": self.layout, "network": self.network.to_json(),
                "preprocessing": asdict(self.preprocessing), "weights_dtype": self.weights_dtype}

    @classmethod
    def from_json(cls, data: dict, where: str) -> ModelConfig:
        if not isinstance(data, dict) or data.get("format") != MODEL_FORMAT:
            raise ModelError(f"{where}: not a LabelShare model configuration")
        if data.get("format_version") != MODEL_FORMAT_VERSION:
            raise ModelError(f"{where}: model format version {data.get('format_version')} is not supported "
                             f"(this LabelShare reads version {MODEL_FORMAT_VERSION})")
        try:
            return cls(method=data["method"], layout=data["layout"],
                       network=NetworkConfig.from_json(data["network"]),
                       preprocessing=PreprocessingConfig(**data.get("preprocessing", {})),
                       weights_dtype=data.get("weights_dtype", "float32"))
        except (KeyError, TypeError, ValueError) as error:
            raise ModelError(f"{where}: malformed model configuration ({type(error).__name__}: {error})") from None


@dataclass
class Model:
    """A loaded model version, ready for inference on ``device``."""

    path: Path | None
    config: ModelConfig
    labelspace: LabelSpace
    network: torch.nn.Module
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def heads(self) -> dict[str, TaskHead]:
        return task_heads(self.config.layout, self.labelspace)

    @property
    def tasks(self) -> list[str]:
        return self.labelspace.task_names

    def task_labels(self, task: str) -> list[tuple[int, str]]:
        """(label id, label name) of a task, in id order; raises UnknownTaskError listing the known tasks."""
        return [(e.id, e.name) for e in sorted(self.labelspace.task(task).labels, key=lambda e: e.id)]

    def read_json(self, name: str, default: Any = None) -> Any:
        if self.path is None or not (self.path / name).is_file():
            return default
        return read_json(self.path / name)


def save_weights(network: torch.nn.Module, path: Path, dtype: str = "float32") -> None:
    """Write weights atomically; aliased tensors (DynUNet's skip layers) are stored once."""
    target_dtype = {"float32": torch.float32, "float16": torch.float16}[dtype]
    to_save = copy.deepcopy(network).to(device="cpu", dtype=target_dtype)
    with atomic_path(path) as tmp:
        save_safetensors_model(to_save, str(tmp), metadata={"format": MODEL_FORMAT, "dtype": dtype})


def load_weights(network: torch.nn.Module, path: Path) -> None:
    try:
        load_safetensors_model(network, str(path), strict=True)
    except SafetensorError as error:
        raise ModelError(f"{path}: weights cannot be read, the file is truncated or corrupt ({error})") from None
    except (RuntimeError, KeyError) as error:
        first_line = str(error).strip().splitlines()[0][:300] if str(error).strip() else type(error).__name__
        raise ModelError(f"{path}: weights do not match config.json ({first_line})") from None


def write_manifest(folder: Path) -> None:
    """Record the sha256 of every file of the folder (manifest last, so it vouches for a complete folder)."""
    files = {p.relative_to(folder).as_posix(): sha256_file(p)
             for p in sorted(folder.rglob("*")) if p.is_file() and p.name != "manifest.json"
             and not p.relative_to(folder).parts[0].startswith(".")}
    atomic_write_json(folder / "manifest.json", {"format": "labelshare.manifest", "algorithm": "sha256",
                                                 "files": files})


def verify_folder(path: str | Path) -> tuple[ModelConfig, LabelSpace]:
    """Check a model folder without building the network: files present, hashes match, config and label space agree.

    Raises :class:`ModelError` with the reason a user can act on; used by the Slicer model selector.
    """
    path = Path(path)
    if not path.is_dir():
        raise ModelError(f"{path}: model folder does not exist")
    missing = [name for name in REQUIRED_FILES if not (path / name).is_file()]
    if missing:
        raise ModelError(f"{path}: not a complete model folder, missing {', '.join(missing)}")
    manifest = read_json(path / "manifest.json", "manifest", ModelError)
    files = manifest.get("files") if isinstance(manifest, dict) else None
    if not isinstance(files, dict):
        raise ModelError(f"{path / 'manifest.json'}: malformed manifest")
    for name in REQUIRED_FILES[:-1]:
        if name not in files:
            raise ModelError(f"{path / 'manifest.json'}: does not list {name}")
    for name, digest in files.items():
        file = path / name
        if not file.is_file():
            raise ModelError(f"{file}: listed in manifest.json but missing")
        if sha256_file(file) != digest:
            raise ModelError(f"{file}: contents do not match manifest.json (modified or corrupted after training)")
    config = ModelConfig.from_json(read_json(path / "config.json", "model configuration", ModelError),
                                   str(path / "config.json"))
    try:
        space = LabelSpace.load(path / "labelspace.json")
    except LabelSpaceError as error:
        raise ModelError(str(error)) from None
    expected = out_channels(config.layout, space)
    if config.network.out_channels != expected:
        raise ModelError(f"{path}: config.json has {config.network.out_channels} output channels but the label space "
                         f"needs {expected}")
    if config.network.n_tasks != len(space.tasks) and config.network.conditioning != "none":
        raise ModelError(f"{path}: network is conditioned on {config.network.n_tasks} tasks but the label space has "
                         f"{len(space.tasks)}")
    return config, space


def resolve_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise LabelShareError("device 'cuda' requested but no CUDA GPU is available (use --device cpu or auto)")
    if device not in ("cpu", "cuda") and not device.startswith("cuda:"):
        raise LabelShareError(f"unknown device '{device}' (use auto, cuda or cpu)")
    return torch.device(device)


def load_model(path: str | Path | None = None, device: str = "cpu") -> Model:
    """Load and verify a model folder (default: the bundled default model)."""
    path = model_dir_or_default(path)
    config, space = verify_folder(path)
    network = build_network(copy.deepcopy(config.network))
    load_weights(network, path / WEIGHTS_FILE)
    target = resolve_device(device)
    network.to(target).eval()
    return Model(path=path, config=config, labelspace=space, network=network, device=target)


def save_model_folder(folder: Path, network: torch.nn.Module, config: ModelConfig, space: LabelSpace,
                      json_files: dict[str, Any] | None = None, text_files: dict[str, str] | None = None) -> None:
    """Write a complete model folder into ``folder`` (a staging folder), manifest last."""
    folder.mkdir(parents=True, exist_ok=True)
    save_weights(network, folder / WEIGHTS_FILE, config.weights_dtype)
    atomic_write_json(folder / "config.json", config.to_json())
    space.save(folder / "labelspace.json")
    for name, data in (json_files or {}).items():
        atomic_write_json(folder / name, data)
    for name, text in (text_files or {}).items():
        atomic_write_text(folder / name, text)
    write_manifest(folder)


def data_fingerprint(paths: Iterable[Path]) -> str:
    """sha256 over the names and contents of the files used (recorded in lineage)."""
    digest = hashlib.sha256()
    for path in sorted(paths, key=lambda p: p.name):
        digest.update(path.name.encode())
        digest.update(sha256_file(path).encode())
    return digest.hexdigest()


def environment_summary(world_size: int = 1) -> dict:
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"CPU ({os.cpu_count()} cores)"
    return {"torch": torch.__version__, "python": platform.python_version(), "device": device,
            "world_size": world_size}


@dataclass
class ModelSummary:
    path: Path
    valid: bool
    reason: str = ""
    method: str = ""
    tasks: list[str] = field(default_factory=list)
    parent: str | None = None
    created: str = ""
    metrics: dict = field(default_factory=dict)


def summarize_model(path: Path) -> ModelSummary:
    try:
        config, space = verify_folder(path)
    except ModelError as error:
        return ModelSummary(path=path, valid=False, reason=str(error))
    lineage = read_json(path / "lineage.json") if (path / "lineage.json").is_file() else {}
    metrics = read_json(path / "metrics.json") if (path / "metrics.json").is_file() else {}
    return ModelSummary(path=path, valid=True, method=config.method, tasks=space.task_names,
                        parent=lineage.get("parent"), created=lineage.get("created", ""),
                        metrics=metrics.get("mean_dice", {}))


def list_models(roots: Iterable[str | Path] | None = None) -> list[ModelSummary]:
    """Every model folder directly under the given roots (default: user store and bundled models): valid ones oldest
    first, then the invalid ones with their reason."""
    roots = [Path(r) for r in roots] if roots else [user_models_dir(), BUNDLED_MODELS_DIR]
    found = []
    for root in roots:
        if (root / "config.json").is_file():
            found.append(summarize_model(root))
        elif root.is_dir():
            found += [summarize_model(p) for p in sorted(root.iterdir())
                      if p.is_dir() and not p.name.startswith(".") and (p / "config.json").is_file()]
    return sorted(found, key=lambda s: (not s.valid, s.created, str(s.path)))
