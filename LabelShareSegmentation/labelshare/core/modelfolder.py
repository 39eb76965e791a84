"""The model folder format: what a model version holds, its configuration, its manifest, checks, listing and the
state of a run that builds one. Light (no torch): the Slicer modules list and verify models with it in Slicer's own
process; loading the network is :mod:`labelshare.engine.models`.

A model folder (one immutable *version*)::

    model.safetensors     network weights (safetensors: loading never unpickles anything)
    config.json           format, method, output layout, network and preprocessing configuration
    labelspace.json       the shared label space (tasks, labels, statistics, mapping both ways)
    manifest.json         sha256 of every other file; a folder that does not match is refused
    split.json            patient-wise training/validation split per task
    metrics.json          validation Dice/HD95 per task and label
    training_log.jsonl    one JSON object per epoch
    lineage.json          parent model, tasks added, hashes of the data used, command line
    README.md             model card
    memory/               the rehearsal memory: memory.json and its arrays (:mod:`labelshare.core.memory`)
    input_check.json      the input check's statistics of the training images, with input_check.npz
                          (:mod:`labelshare.core.input_check`)

Every file a manifest names must be a plain file inside the folder (no symbolic links, no ``..``). Folders are
written under a staging name and renamed into place when complete (:mod:`labelshare.core.paths`).
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any
from collections.abc import Iterable

from .config import NetworkConfig
from .errors import DataError, LabelShareError, LabelSpaceError, ModelError
from .fileio import atomic_write_json, read_json, sha256_file
from .input_check import INPUT_CHECK_FILE, InputCheckStatistics
from .labelspace import LabelSpace
from .layouts import layout_named, out_channels
from .memory import RehearsalMemory
from .methods import method_named
from .naming import check_relative_file
from .paths import (BUNDLED_MODELS_DIR, candidate_dir_for, model_dir_or_default, refused_report_paths,
                    staging_dir_for, user_models_dir)
from .plans import check_fixed_size, check_patch_multiple

MODEL_FORMAT = "labelshare.model"
MODEL_FORMAT_VERSION = 2  # 2: per-task plans in labelspace.json; 1 (first release): one fixed image size
READABLE_MODEL_VERSIONS = (1, 2)
WEIGHTS_FILE = "model.safetensors"
MANIFEST_FILE = "manifest.json"
REQUIRED_FILES = ("config.json", "labelspace.json", WEIGHTS_FILE, MANIFEST_FILE)


@dataclass
class PreprocessingConfig:
    """What ``config.json`` says about preprocessing. How an image becomes network input is each task's plan in
    ``labelspace.json``: its resolution and its preprocessing schemes (:mod:`labelshare.core.preprocessing`), which the
    code dispatches on. ``image_size`` is only set by first-release models, which resized every slice to one square
    size (their plans are made from it: :meth:`labelshare.core.labelspace.LabelSpace.with_fixed_size_plans`)."""

    image_size: int | None = None

    @classmethod
    def from_json(cls, data: dict) -> PreprocessingConfig:
        """Model folders before the schemes were recorded describe them here in prose (normalisation, slicing,
        resize); the schemes those models were made with are the first ones, which their plans read as."""
        if not isinstance(data, dict):
            raise ValueError(f"preprocessing must be a JSON object, not {type(data).__name__}")
        return cls(image_size=data.get("image_size"))


@dataclass
class ModelConfig:
    """``config.json`` of a model folder."""

    method: str
    layout: str
    network: NetworkConfig
    preprocessing: PreprocessingConfig = field(default_factory=PreprocessingConfig)
    weights_dtype: str = "float32"
    # post-processing chosen on the validation cases: task -> labels of which only the largest connected component
    # is kept (nnU-Net's decision; labelshare.engine.evaluation.choose_postprocessing)
    largest_component: dict[str, list[str]] = field(default_factory=dict)

    def __post_init__(self):
        method_named(self.method)  # ValueError naming the known methods
        layout_named(self.layout)
        if self.weights_dtype not in ("float32", "float16"):
            raise ValueError(f"weights_dtype must be float32 or float16, not {self.weights_dtype!r}")
        if not isinstance(self.largest_component, dict) or not all(
                isinstance(task, str) and isinstance(labels, list) and all(isinstance(label, str) for label in labels)
                for task, labels in self.largest_component.items()):
            raise ValueError("largest_component must map task names to lists of label names")
        if self.preprocessing.image_size is not None:  # a first-release model: its fixed-size plans
            try:
                check_fixed_size(self.preprocessing.image_size, "preprocessing image_size",
                                 self.network.patch_multiple)
            except LabelShareError as error:
                raise ValueError(str(error)) from None

    @classmethod
    def for_method(cls, method: str, space: LabelSpace, weights_dtype: str) -> ModelConfig:
        """The configuration of a new model of ``method`` for the tasks of ``space``."""
        try:
            chosen = method_named(method)
        except ValueError as error:
            raise ModelError(str(error)) from None
        if method == "per-task" and len(space.tasks) != 1:
            raise ModelError("a per-task model is trained on exactly one task")
        # one input channel per slice of the widest slice context (tasks of less context repeat their outermost
        # slices: labelshare.core.preprocessing.context_offsets)
        channels = max((entry.plan.slice_context for entry in space.tasks.values() if entry.plan), default=1)
        network = NetworkConfig(out_channels=out_channels(chosen.layout, space), n_tasks=len(space.tasks),
                                conditioning=chosen.conditioning, in_channels=channels)
        return cls(method=method, layout=chosen.layout, network=network, weights_dtype=weights_dtype)

    def to_json(self) -> dict:
        return {"format": MODEL_FORMAT, "format_version": MODEL_FORMAT_VERSION, "method": self.method,
                "layout": self.layout, "network": self.network.to_json(),
                "preprocessing": asdict(self.preprocessing), "weights_dtype": self.weights_dtype,
                "largest_component": self.largest_component}

    @classmethod
    def from_json(cls, data: dict, where: str) -> ModelConfig:
        if not isinstance(data, dict) or data.get("format") != MODEL_FORMAT:
            raise ModelError(f"{where}: not a LabelShare model configuration")
        if data.get("format_version") not in READABLE_MODEL_VERSIONS:
            raise ModelError(f"{where}: model format version {data.get('format_version')} is not supported "
                             f"(this LabelShare reads versions {', '.join(map(str, READABLE_MODEL_VERSIONS))})")
        try:
            return cls(method=data["method"], layout=data["layout"],
                       network=NetworkConfig.from_json(data["network"]),
                       preprocessing=PreprocessingConfig.from_json(data.get("preprocessing", {})),
                       weights_dtype=data.get("weights_dtype", "float32"),
                       largest_component=data.get("largest_component", {}))
        except (KeyError, TypeError, ValueError) as error:
            reason = f"{error} missing" if isinstance(error, KeyError) else str(error)
            raise ModelError(f"{where}: malformed model configuration ({reason})") from None


def folder_file(folder: Path, name: str, what: str = "file") -> Path:
    """``folder/name`` after checking that it stays inside ``folder``: a safe relative name, no symbolic link on
    the way, and (when it exists) a plain file."""
    try:
        check_relative_file(name, f"{what} name")
    except DataError as error:
        raise ModelError(f"{folder / MANIFEST_FILE}: {error}") from None
    path = folder / name
    for part in [path, *path.parents]:
        if part == folder:
            break
        if part.is_symlink():
            raise ModelError(f"{part}: a symbolic link; a model folder holds plain files only")
    if path.exists() and not path.is_file():
        raise ModelError(f"{path}: not a plain file")
    return path


def write_manifest(folder: Path) -> None:
    """Record the sha256 of every file of the folder (manifest last, so it vouches for a complete folder).
    Hidden files (temporary files of an interrupted write, the checkpoint folder) are not part of a model."""
    files = {}
    for path in sorted(folder.rglob("*")):
        relative = path.relative_to(folder)
        if path.is_file() and path.name != MANIFEST_FILE and not any(p.startswith(".") for p in relative.parts):
            files[relative.as_posix()] = sha256_file(folder_file(folder, relative.as_posix()))
    atomic_write_json(folder / MANIFEST_FILE, {"format": "labelshare.manifest", "algorithm": "sha256", "files": files})


def verify_folder(path: str | Path) -> tuple[ModelConfig, LabelSpace]:
    """Check a model folder without building the network: files present and inside the folder, hashes match,
    config and label space agree. Raises :class:`ModelError` with a reason a user can act on."""
    path = Path(path)
    if not path.is_dir():
        raise ModelError(f"{path}: " + ("not a model folder (a file)" if path.exists() else
                                        "model folder does not exist"))
    missing = [name for name in REQUIRED_FILES if not (path / name).is_file()]
    if missing:
        raise ModelError(f"{path}: not a complete model folder, missing {', '.join(missing)}")
    manifest = read_json(folder_file(path, MANIFEST_FILE), "manifest", ModelError)
    files = manifest.get("files") if isinstance(manifest, dict) else None
    if not isinstance(files, dict) or not all(isinstance(v, str) for v in files.values()):
        raise ModelError(f"{path / MANIFEST_FILE}: malformed manifest")
    for name in REQUIRED_FILES[:-1]:
        if name not in files:
            raise ModelError(f"{path / MANIFEST_FILE}: does not list {name}")
    for name, digest in files.items():
        file = folder_file(path, name)
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
    if space.plan_settings is None:  # a first-release model: its plans are its one fixed size
        if not config.preprocessing.image_size:
            raise ModelError(f"{path}: labelspace.json has no plans and config.json no image size")
        space = space.with_fixed_size_plans(config.preprocessing.image_size)
    missing_plans = [name for name, task in space.tasks.items() if task.plan is None]
    if missing_plans:
        raise ModelError(f"{path / 'labelspace.json'}: task(s) {', '.join(missing_plans)} have no plan")
    try:
        for name, task in space.tasks.items():
            check_patch_multiple(task.plan, config.network.patch_multiple, f"task '{name}'")
    except LabelSpaceError as error:
        raise ModelError(f"{path / 'labelspace.json'}: {error}") from None
    too_wide = [name for name, task in space.tasks.items() if task.plan.slice_context > config.network.in_channels]
    if too_wide:
        raise ModelError(f"{path}: task {too_wide[0]}'s plan takes {space.tasks[too_wide[0]].plan.slice_context} "
                         f"slices per input but the network has {config.network.in_channels} input channels")
    expected = out_channels(config.layout, space)
    if config.network.out_channels != expected:
        raise ModelError(f"{path}: config.json has {config.network.out_channels} output channels but the label space "
                         f"needs {expected}")
    unknown = [f"{task}:{label}" for task, labels in config.largest_component.items() for label in labels
               if task not in space.tasks or label not in {entry.name for entry in space.tasks[task].labels}]
    if unknown:
        raise ModelError(f"{path / 'config.json'}: largest_component names labels the label space does not have: "
                         f"{', '.join(unknown)}")
    if config.network.n_tasks != len(space.tasks) and config.network.conditioning != "none":
        raise ModelError(f"{path}: network is conditioned on {config.network.n_tasks} tasks but the label space has "
                         f"{len(space.tasks)}")
    read_memory(path, space, files)
    statistics = InputCheckStatistics.read(path)
    unknown_tasks = sorted(set(statistics.tasks) - set(space.tasks)) if statistics is not None else []
    if unknown_tasks:
        raise ModelError(f"{path / INPUT_CHECK_FILE}: has statistics of task(s) {', '.join(unknown_tasks)}, which the "
                         "label space does not have")
    return config, space


def read_memory(path: Path, space: LabelSpace, listed: dict[str, str] | None = None) -> RehearsalMemory | None:
    """The rehearsal memory of a model folder (None: a version without one), checked against its label space, its
    ``split.json`` and (``listed``) its manifest; :class:`ModelError` naming ``memory/memory.json`` otherwise."""
    split = read_model_json(path, "split.json", {}) or {}
    tasks = split.get("tasks") if isinstance(split, dict) else None
    return RehearsalMemory.read(path, space, tasks if isinstance(tasks, dict) else None, listed)


def read_model_json(folder: Path | None, name: str, default: Any = None) -> Any:
    """A JSON file of a model folder (``split.json``, ``metrics.json``…), or ``default`` when it is absent."""
    if folder is None or not (folder / name).is_file():
        return default
    return read_json(folder_file(folder, name), name, ModelError)


def is_non_commercial(licence: str) -> bool:
    """Whether a task's data licence forbids commercial use (CC BY-NC…, "non-commercial", "for research use"): the
    model card and the Slicer module flag a model trained on such data, whose weights inherit the restriction."""
    return bool(re.search(r"\bNC\b", licence) or re.search(r"non-?commercial|research use", licence, re.IGNORECASE))


def data_fingerprint(paths: Iterable[Path]) -> str:
    """sha256 over the names and contents of the files used (recorded in lineage)."""
    digest = hashlib.sha256()
    for path in sorted(paths, key=lambda p: p.name):
        digest.update(path.name.encode())
        digest.update(sha256_file(path).encode())
    return digest.hexdigest()


@dataclass
class ModelSummary:
    """A model folder as a model list shows it; ``reason`` says why it cannot be used when ``valid`` is False;
    ``name`` is what ``--model`` takes (:func:`model_name`)."""

    path: Path
    valid: bool
    reason: str = ""
    method: str = ""
    tasks: list[str] = field(default_factory=list)
    parent: str | None = None
    created: str = ""
    metrics: dict = field(default_factory=dict)
    name: str = ""


def summarize_model(path: Path, verified: tuple[ModelConfig, LabelSpace] | None = None) -> ModelSummary:
    """The folder as a model list shows it; never raises (an unusable folder is ``valid=False`` with the reason).
    ``verified`` is the result of an earlier :func:`verify_folder` of the same folder (not repeated)."""
    try:
        config, space = verified or verify_folder(path)
        lineage = read_model_json(path, "lineage.json", {}) or {}
        metrics = read_model_json(path, "metrics.json", {}) or {}
    except ModelError as error:
        return ModelSummary(path=path, valid=False, reason=str(error))
    return ModelSummary(path=path, valid=True, method=config.method, tasks=space.task_names,
                        parent=lineage.get("parent"), created=lineage.get("created", ""),
                        metrics=metrics.get("mean_dice", {}))


def is_model_folder(path: Path) -> bool:
    return path.is_dir() and not path.name.startswith(".") and (path / "config.json").is_file()


def model_folders(root: str | Path) -> list[Path]:
    """The model folders a root holds: the root itself when it is one, else ``<root>/<model>`` and
    ``<root>/<run>/<model>`` (a demo or benchmark run); hidden folders (runs in progress) are left out."""
    root = Path(root)
    if is_model_folder(root):
        return [root]
    found = []
    for child in sorted(root.iterdir()) if root.is_dir() else []:
        if is_model_folder(child):
            found.append(child)
        elif child.is_dir() and not child.name.startswith("."):
            found += [grandchild for grandchild in sorted(child.iterdir()) if is_model_folder(grandchild)]
    return found


def model_name(folder: Path, root: Path) -> str:
    """A model's name, as ``labelshare models`` prints it and ``--model`` takes it: its folder's path below the
    root that holds it (``labelshare-4tasks-v3``, ``demo-run/model``)."""
    return folder.name if folder == root else folder.relative_to(root).as_posix()


def _model_roots(roots: Iterable[str | Path] | None) -> list[Path]:
    return [Path(r) for r in roots] if roots else [user_models_dir(), BUNDLED_MODELS_DIR]


def list_models(roots: Iterable[str | Path] | None = None) -> list[ModelSummary]:
    """Every model folder under the given roots (default: user store and bundled models, see
    :func:`model_folders`): valid ones oldest first, then the invalid ones with their reason."""
    found: dict[Path, ModelSummary] = {}
    for root in _model_roots(roots):
        for folder in model_folders(root):
            if folder.resolve() not in found:
                found[folder.resolve()] = replace(summarize_model(folder), name=model_name(folder, root))
    return sorted(found.values(), key=lambda s: (not s.valid, s.created, str(s.path)))


def resolve_model(model: str | Path | None, roots: Iterable[str | Path] | None = None) -> Path:
    """The model folder that ``--model`` (or a worker request's ``model``) names, for every command that takes a
    model: an existing folder; else a name as ``labelshare models`` prints it, looked up in the user store and the
    bundled models (or ``roots``); and without a model (None or ''), the default model, the newest bundled one.
    Whether the folder is a valid model is :func:`verify_folder`'s question."""
    if not model:
        return model_dir_or_default(None)
    path = Path(model)
    if path.exists():
        return path
    named = {folder.resolve(): folder for root in _model_roots(roots) for folder in model_folders(root)
             if model_name(folder, root) == str(model)}
    if len(named) == 1:
        return next(iter(named.values()))
    if named:
        raise ModelError(f"{model}: {len(named)} models have this name ({', '.join(map(str, named.values()))}); "
                         "give the folder")
    raise ModelError(f"{model}: model folder does not exist, and no model has this name (labelshare models lists "
                     "them)")


def check_new_version(out: str | Path) -> Path:
    """The one rule for where ``train``, ``add-task`` and ``postprocess`` may write a new model version (``--out``):
    a folder that does not exist yet, and not inside a model folder, where it would be hidden (a model folder's
    manifest lists its own files only, so the old version still verifies) and could never be published beside its
    parent."""
    out = Path(out)
    if out.exists():
        raise LabelShareError(f"{out}: already exists; model versions are never overwritten, choose a new --out")
    inside = next((folder for folder in Path(os.path.abspath(out)).parents if is_model_folder(folder)), None)
    if inside is not None:
        raise LabelShareError(f"{out}: is inside the model folder {inside}; a new version goes beside the others, "
                              f"not inside one (e.g. --out {inside.parent / out.name})")
    return out


RUN_STATES = ("published", "refused", "interrupted", "gone")


def run_work_folders(out: str | Path) -> list[Path]:
    """The hidden folders a run that publishes ``out`` works in (they exist only while it is unfinished): the
    staging folder of ``train``, and for ``add-task`` the candidate and its staging folder."""
    out = Path(out)
    return [staging_dir_for(out), candidate_dir_for(out), staging_dir_for(candidate_dir_for(out))]


def run_state(out: str | Path) -> str:
    """The state of the run that publishes ``out`` (one of :data:`RUN_STATES`): ``published``, ``refused`` (an
    add-task version the regression gate kept back: publish anyway or discard), ``interrupted`` (resumable) or
    ``gone`` (nothing was written)."""
    out = Path(out)
    if out.exists():
        return "published"
    if refused_report_paths(out)[0].is_file() and candidate_dir_for(out).is_dir():
        return "refused"
    return "interrupted" if any(folder.exists() for folder in run_work_folders(out)) else "gone"
