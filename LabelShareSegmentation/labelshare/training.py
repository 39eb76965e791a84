"""Training: in-memory slice banks, task-balanced sampling, on-device augmentation, the loop and its checkpoints.

All training data of the supported task sizes fits in memory as resized 2D slices, so there is no data loader:
batches are drawn and augmented on the training device, which keeps the GPU busy without worker processes.

Checkpoints are written after every epoch and on SIGINT/SIGTERM into ``<staging>/.checkpoint/`` (weights and
optimiser state in safetensors, counters and random states in JSON, JSON written last so that it always points to
complete files). ``resume=True`` continues from there; a run stopped by a signal raises
:class:`~labelshare.errors.TrainingInterrupted` after saving. Under ``torchrun`` (WORLD_SIZE > 1) the loop runs with
DistributedDataParallel: every rank draws its own samples (seed + rank), rank 0 validates, logs and checkpoints.
"""

from __future__ import annotations

import math
import os
import signal
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from collections.abc import Callable, Iterator

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from monai.losses import DiceLoss
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .errors import LabelShareError, TrainingInterrupted
from .fileio import atomic_path, atomic_write_json, not_written, read_json
from .config import TrainConfig
from .layouts import TaskHead
from .metrics import dice_per_label
from .models import tensors_problem
from .naming import check_name
from .progress import Progress, format_duration
from .tasks import TaskDataset

CHECKPOINT_DIR = ".checkpoint"  # hidden: not part of the finished model folder or its manifest


# -- data -------------------------------------------------------------------------------------------------------------
@dataclass
class SliceBank:
    """All slices of one task at training resolution: images (N, 1, S, S) float16, targets (N, S, S) uint8 holding
    positions in the task's head, the case of every slice, and which slices contain foreground."""

    task: str
    images: torch.Tensor
    targets: torch.Tensor
    case_of_slice: list[str]
    foreground: np.ndarray
    flip_allowed: bool

    def __len__(self) -> int:
        return self.images.shape[0]

    def to(self, device: torch.device) -> SliceBank:
        self.images = self.images.to(device)
        self.targets = self.targets.to(device)
        return self

    def select(self, rows: np.ndarray) -> SliceBank:
        """The slices where the boolean ``rows`` is true (e.g. the cases of one side of the split)."""
        index = torch.from_numpy(np.flatnonzero(rows))
        return SliceBank(task=self.task, images=self.images[index], targets=self.targets[index],
                         case_of_slice=[c for c, keep in zip(self.case_of_slice, rows, strict=True) if keep],
                         foreground=self.foreground[rows], flip_allowed=self.flip_allowed)


def resize_slices(image: np.ndarray, label: np.ndarray | None, size: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Resize (n, h, w) slices to (n, size, size): bilinear with antialiasing for images, nearest for labels."""
    image_t = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[:, None]
    image_t = F.interpolate(image_t, size=(size, size), mode="bilinear", align_corners=False,
                            antialias=image.shape[-1] > size or image.shape[-2] > size)
    label_t = None
    if label is not None:
        label_t = torch.from_numpy(np.ascontiguousarray(label).astype(np.int64))[:, None].float()
        label_t = F.interpolate(label_t, size=(size, size), mode="nearest-exact")[:, 0].round().to(torch.int64)
    return image_t, label_t


def build_slice_bank(task: TaskDataset, case_names: list[str], head: TaskHead, image_size: int,
                     progress: Progress | None = None, fraction_range: tuple[float, float] = (0.0, 0.0)) -> SliceBank:
    images, targets, cases = [], [], []
    lut = torch.from_numpy(head.target_lut)
    for i, case in enumerate(task.iter_cases(case_names)):
        image, label = resize_slices(case.image, case.label, image_size)
        images.append(image.to(torch.float16))
        targets.append(lut[label].to(torch.uint8))
        cases += [case.name] * image.shape[0]
        if progress is not None and case_names:
            start, end = fraction_range
            progress.progress("loading", start + (end - start) * (i + 1) / len(case_names),
                              f"{task.name}: loaded {i + 1}/{len(case_names)} cases")
    if not images:
        raise LabelShareError(f"task '{task.name}': no cases to load")
    targets_t = torch.cat(targets)
    return SliceBank(task=task.name, images=torch.cat(images), targets=targets_t, case_of_slice=cases,
                     foreground=(targets_t.flatten(1) > 0).any(dim=1).numpy(), flip_allowed=not task.lateralised)


class TaskBalancedSampler:
    """Every batch holds (about) the same number of slices of each task; within a task, a fraction of the slices is
    drawn from those containing foreground (nnU-Net's oversampling), the rest uniformly."""

    def __init__(self, banks: list[SliceBank], batch_size: int, foreground_fraction: float, rng: np.random.Generator):
        self.banks = banks
        self.batch_size = batch_size
        self.foreground_fraction = foreground_fraction
        self.rng = rng
        self.foreground_indices = [np.flatnonzero(bank.foreground) for bank in banks]

    def sample(self) -> list[tuple[int, int]]:
        """(bank index, slice index) pairs of one batch."""
        n_tasks = len(self.banks)
        per_task = [self.batch_size // n_tasks] * n_tasks
        for extra in self.rng.choice(n_tasks, self.batch_size % n_tasks, replace=False):
            per_task[extra] += 1
        picks = []
        for bank_index, count in enumerate(per_task):
            foreground = self.foreground_indices[bank_index]
            for _ in range(count):
                if foreground.size and self.rng.random() < self.foreground_fraction:
                    picks.append((bank_index, int(self.rng.choice(foreground))))
                else:
                    picks.append((bank_index, int(self.rng.integers(len(self.banks[bank_index])))))
        return picks


@dataclass
class Batch:
    images: torch.Tensor        # (B, 1, S, S) float32
    targets: torch.Tensor       # (B, S, S) int64 positions in each sample's head
    task_index: torch.Tensor    # (B,) int64 index of each sample's task in the label space
    heads: list[TaskHead]       # heads of the tasks in this batch, one per distinct task


def gather_batch(banks: list[SliceBank], heads: list[TaskHead], picks: list[tuple[int, int]],
                 device: torch.device) -> Batch:
    images = torch.stack([banks[b].images[i] for b, i in picks]).to(device, torch.float32)
    targets = torch.stack([banks[b].targets[i] for b, i in picks]).to(device, torch.int64)
    task_index = torch.tensor([heads[b].index for b, _ in picks], device=device)
    present = sorted({b for b, _ in picks})
    return Batch(images=images, targets=targets, task_index=task_index, heads=[heads[b] for b in present])


class Augmenter:
    """Batched spatial and intensity augmentation on the training device.

    Spatial: rotation +-15 degrees, isotropic scale 0.85-1.25, translation +-6 %, left-right flip only for tasks
    that are not lateralised. Intensity: brightness 0.75-1.25, contrast 0.75-1.25, gamma 0.7-1.5, Gaussian noise.
    """

    def __init__(self, rng: np.random.Generator, flip_allowed: dict[int, bool], probability: float = 0.5):
        self.rng = rng
        self.flip_allowed = flip_allowed
        self.probability = probability

    def __call__(self, batch: Batch) -> Batch:
        n, device = batch.images.shape[0], batch.images.device
        rng = self.rng
        apply = rng.random(n) < self.probability
        angle = np.where(apply, rng.uniform(-np.pi / 12, np.pi / 12, n), 0.0)
        scale = np.where(apply, rng.uniform(0.85, 1.25, n), 1.0)
        shift = np.where(apply[:, None], rng.uniform(-0.06, 0.06, (n, 2)), 0.0)
        tasks = batch.task_index.cpu().numpy()
        flip = np.array([self.flip_allowed.get(int(t), False) for t in tasks]) & (rng.random(n) < 0.5)
        cos, sin = np.cos(angle) / scale, np.sin(angle) / scale
        theta = np.zeros((n, 2, 3), dtype=np.float32)
        theta[:, 0, 0] = cos * np.where(flip, -1.0, 1.0)
        theta[:, 0, 1] = -sin
        theta[:, 1, 0] = sin * np.where(flip, -1.0, 1.0)
        theta[:, 1, 1] = cos
        theta[:, :, 2] = shift
        grid = F.affine_grid(torch.from_numpy(theta).to(device), list(batch.images.shape), align_corners=False)
        images = F.grid_sample(batch.images, grid, mode="bilinear", padding_mode="border", align_corners=False)
        targets = F.grid_sample(batch.targets[:, None].float(), grid, mode="nearest", padding_mode="zeros",
                                align_corners=False)[:, 0].to(torch.int64)
        images = self._intensity(images)
        return Batch(images=images, targets=targets, task_index=batch.task_index, heads=batch.heads)

    def _intensity(self, images: torch.Tensor) -> torch.Tensor:
        n, device, rng = images.shape[0], images.device, self.rng

        def per_sample(values: np.ndarray) -> torch.Tensor:
            return torch.from_numpy(values.astype(np.float32)).to(device)[:, None, None, None]

        p = self.probability / 2
        brightness = np.where(rng.random(n) < p, rng.uniform(0.75, 1.25, n), 1.0)
        contrast = np.where(rng.random(n) < p, rng.uniform(0.75, 1.25, n), 1.0)
        gamma = np.where(rng.random(n) < p, rng.uniform(0.7, 1.5, n), 1.0)
        noise = np.where(rng.random(n) < p, rng.uniform(0.0, 0.1, n), 0.0)
        mean = images.mean(dim=(1, 2, 3), keepdim=True)
        images = (images - mean) * per_sample(contrast) + mean
        images = images * per_sample(brightness)
        low = images.amin(dim=(1, 2, 3), keepdim=True)
        high = images.amax(dim=(1, 2, 3), keepdim=True)
        span = (high - low).clamp_min(1e-6)
        images = ((images - low) / span).clamp(0, 1) ** per_sample(gamma) * span + low
        seed = int(rng.integers(2**62))
        generator = torch.Generator(device=device).manual_seed(seed)
        return images + torch.randn(images.shape, generator=generator, device=device) * per_sample(noise)


# -- loss -------------------------------------------------------------------------------------------------------------
class SegmentationLoss:
    """Cross-entropy + Dice per task, averaged over the tasks of the batch (task-balanced).

    A task's softmax covers its head's channels; Dice (MONAI, batch Dice) covers only the positions holding one of
    the task's labels, so a shared label that a task does not use is trained towards background by the
    cross-entropy alone.
    """

    def __init__(self):
        self.dice = DiceLoss(include_background=True, softmax=False, batch=True, smooth_nr=1e-5, smooth_dr=1e-5)

    def __call__(self, logits: torch.Tensor, batch: Batch) -> torch.Tensor:
        total = logits.new_zeros(())
        for head in batch.heads:
            mask = batch.task_index == head.index
            task_logits = logits[mask].float()
            if not head.all_channels or task_logits.shape[1] != len(head.channels):
                task_logits = task_logits[:, head.channels]
            target = batch.targets[mask]
            cross_entropy = F.cross_entropy(task_logits, target)
            probabilities = task_logits.softmax(dim=1)
            positions = head.label_positions
            one_hot = F.one_hot(target, len(head.channels)).permute(0, 3, 1, 2).float()
            dice = self.dice(probabilities[:, positions], one_hot[:, positions])
            total = total + cross_entropy + dice
        return total / len(batch.heads)


# -- distributed ------------------------------------------------------------------------------------------------------
@dataclass
class DistributedContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def any_flag(self, flag: bool, device: torch.device) -> bool:
        """True on every rank when any rank raised the flag (keeps ranks stopping at the same step)."""
        if not self.enabled:
            return flag
        value = torch.tensor([1.0 if flag else 0.0], device=device)
        dist.all_reduce(value, op=dist.ReduceOp.MAX)
        return bool(value.item() > 0)


@contextmanager
def distributed_context(device_name: str) -> Iterator[DistributedContext]:
    """Join the process group when started by torchrun (WORLD_SIZE > 1), else a single-process context."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        yield DistributedContext()
        return
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = device_name != "cpu" and torch.cuda.is_available()
    if use_cuda:
        torch.cuda.set_device(local_rank)
    dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    try:
        yield DistributedContext(rank=rank, world_size=world_size, local_rank=local_rank)
    finally:
        dist.destroy_process_group()


def training_device(config: TrainConfig, context: DistributedContext) -> torch.device:
    if config.device == "cpu" or (config.device == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise LabelShareError("device 'cuda' requested but no CUDA GPU is available (use --device cpu or auto)")
    return torch.device("cuda", context.local_rank)


# -- loop -------------------------------------------------------------------------------------------------------------
@dataclass
class TrainingState:
    step: int = 0
    history: list[dict] = field(default_factory=list)
    elapsed_s: float = 0.0


class StopRequest:
    """Turns SIGINT/SIGTERM into a flag checked after every step, so that the run can save before exiting."""

    def __init__(self):
        self.signal_number: int | None = None
        self._previous: dict[int, object] = {}

    @property
    def signal_name(self) -> str:
        return signal.Signals(self.signal_number).name if self.signal_number else "a signal"

    def __enter__(self) -> StopRequest:
        for number in (signal.SIGINT, signal.SIGTERM):
            try:
                self._previous[number] = signal.signal(number, self._handle)
            except ValueError:  # not the main thread (e.g. inside a test runner thread): signals stay as they are
                pass
        return self

    def _handle(self, number, frame) -> None:
        self.signal_number = number

    def __exit__(self, *exc) -> None:
        for number, handler in self._previous.items():
            signal.signal(number, handler)


class Trainer:
    """Runs the training loop on prepared slice banks; subclass and override :meth:`loss` to add terms
    (e.g. distillation for incremental learning)."""

    def __init__(self, network: torch.nn.Module, heads: dict[str, TaskHead], train_banks: list[SliceBank],
                 validation_banks: list[SliceBank], config: TrainConfig, workdir: Path, progress: Progress,
                 context: DistributedContext | None = None, run_identity: dict | None = None,
                 fraction_range: tuple[float, float] = (0.0, 1.0)):
        self.config = config
        self.context = context or DistributedContext()
        self.device = training_device(config, self.context)
        self.network = network.to(self.device)
        self.heads = heads
        self.train_banks = [bank.to(self.device) for bank in train_banks]
        self.validation_banks = validation_banks
        self.bank_heads = [heads[bank.task] for bank in self.train_banks]
        self.workdir = workdir
        self.progress = progress if self.context.is_main else Progress("quiet")
        self.run_identity = run_identity or {}
        self.fraction_range = fraction_range
        self.rng = np.random.default_rng([config.seed, self.context.rank])
        self.sampler = TaskBalancedSampler(self.train_banks, self._local_batch_size(), config.foreground_oversampling,
                                           self.rng)
        self.augmenter = Augmenter(self.rng, {heads[b.task].index: b.flip_allowed for b in self.train_banks})
        self.criterion = SegmentationLoss()
        self.optimizer = torch.optim.AdamW(self.network.parameters(), lr=config.learning_rate,
                                           weight_decay=config.weight_decay)
        self.autocast_dtype = None
        if self.device.type == "cuda" and config.amp:
            self.autocast_dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.autocast_dtype == torch.float16)
        self.model = self.network
        if self.context.enabled:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.model = torch.nn.parallel.DistributedDataParallel(self.network, device_ids=ids)

    def _local_batch_size(self) -> int:
        return max(1, self.config.batch_size // self.context.world_size)

    def learning_rate(self, step: int) -> float:
        """nnU-Net's polynomial decay (exponent 0.9) after a short linear warm-up."""
        warmup = min(50, self.config.total_steps // 10)
        if step < warmup:
            return self.config.learning_rate * (step + 1) / warmup
        return self.config.learning_rate * (1 - step / self.config.total_steps) ** 0.9

    def loss(self, logits: torch.Tensor, batch: Batch) -> torch.Tensor:
        return self.criterion(logits, batch)

    def train_step(self, step: int) -> float:
        self.network.train()
        for group in self.optimizer.param_groups:
            group["lr"] = self.learning_rate(step)
        batch = gather_batch(self.train_banks, self.bank_heads, self.sampler.sample(), self.device)
        if self.config.augment:
            batch = self.augmenter(batch)
        autocast = (torch.autocast(self.device.type, dtype=self.autocast_dtype) if self.autocast_dtype
                    else nullcontext())
        with autocast:
            logits = self.model(batch.images, batch.task_index)
        loss = self.loss(logits, batch)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.unscale_(self.optimizer)
        torch.nn.utils.clip_grad_norm_(self.network.parameters(), 12.0)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return float(loss.detach())

    @torch.no_grad()
    def validate(self) -> dict[str, dict[str, float]]:
        """Mean per-case Dice of every label at training resolution, per task (a monitor; final metrics are
        computed at native resolution by :func:`labelshare.evaluation.evaluate_cases`)."""
        self.network.eval()
        result: dict[str, dict[str, float]] = {}
        for bank in self.validation_banks:
            head = self.heads[bank.task]
            predictions = []
            for start in range(0, len(bank), 64):
                images = bank.images[start: start + 64].to(self.device, torch.float32)
                task_index = torch.full((images.shape[0],), head.index, device=self.device)
                logits = self.network(images, task_index)[:, head.channels]
                predictions.append(logits.max(dim=1).indices.cpu())
            prediction = torch.cat(predictions).numpy()
            target = bank.targets.cpu().numpy()
            cases = np.array(bank.case_of_slice)
            per_label: dict[int, list[float]] = {p: [] for p in head.label_positions}
            for case in dict.fromkeys(bank.case_of_slice):
                rows = cases == case
                for position, value in dice_per_label(prediction[rows], target[rows], head.label_positions).items():
                    per_label[position].append(value)
            result[bank.task] = {head.position_names[p]: float(np.nanmean(v)) if np.isfinite(v).any()
                                 else float("nan") for p, v in per_label.items()}
        return result

    # -- checkpoints --------------------------------------------------------------------------------------------------
    def checkpoint_dir(self) -> Path:
        return self.workdir / CHECKPOINT_DIR

    def save_checkpoint(self, state: TrainingState) -> None:
        if not self.context.is_main:
            return
        folder = self.checkpoint_dir()
        folder.mkdir(parents=True, exist_ok=True)
        tag = f"step{state.step:08d}"
        weights = {k: v.detach().cpu().contiguous() for k, v in _unique_state(self.network).items()}
        optimizer_state = self.optimizer.state_dict()
        tensors, slots = {}, {}
        for index, slot in optimizer_state["state"].items():
            slots[str(index)] = []
            for key, value in slot.items():
                tensors[f"{index}.{key}"] = torch.as_tensor(value).detach().cpu().contiguous()
                slots[str(index)].append(key)
        tensors["rng.torch"] = torch.get_rng_state()
        _save_tensors(weights, folder / f"weights-{tag}.safetensors")
        _save_tensors(tensors, folder / f"optimizer-{tag}.safetensors")
        atomic_write_json(folder / "checkpoint.json", {
            "tag": tag, "step": state.step, "elapsed_s": state.elapsed_s, "history": state.history,
            "optimizer_slots": slots, "param_groups": optimizer_state["param_groups"],
            "numpy_rng": self.rng.bit_generator.state, "identity": self.run_identity,
            "scaler": self.scaler.state_dict()})
        for old in folder.glob("*.safetensors"):
            if tag not in old.name:
                old.unlink()

    def load_checkpoint(self) -> TrainingState:
        """The state :meth:`save_checkpoint` saved. A checkpoint of another run, or a damaged one (a missing or
        truncated file, a tampered record), is a LabelShareError naming the folder; the checkpoint is left as it
        is."""
        folder = self.checkpoint_dir()
        info = read_json(folder / "checkpoint.json", "checkpoint")
        if not isinstance(info, dict):
            raise LabelShareError(f"{folder}: the checkpoint is damaged (checkpoint.json is not a JSON object); "
                                  f"delete {self.workdir} to start the run over")
        if info.get("identity") != self.run_identity:
            raise LabelShareError(f"{folder}: the checkpoint belongs to a run with other tasks, label space or "
                                  "settings; start a new run (another --out) or repeat the original command")
        try:
            tag = check_name(info["tag"], "checkpoint tag")  # it names files: it must stay in the folder
            weights = load_file(str(folder / f"weights-{tag}.safetensors"))
            tensors = load_file(str(folder / f"optimizer-{tag}.safetensors"))
            step = int(info["step"])
            if not 0 <= step <= self.config.total_steps:
                raise ValueError(f"step {step} is outside 0..{self.config.total_steps}")
            state = TrainingState(step=step, history=list(info["history"]), elapsed_s=float(info["elapsed_s"]))
            _load_unique_state(self.network, weights)
            slots = {int(index): {key: tensors[f"{index}.{key}"].to(self.device) for key in keys}
                     for index, keys in info["optimizer_slots"].items()}
            self.optimizer.load_state_dict({"state": slots, "param_groups": info["param_groups"]})
            torch.set_rng_state(tensors["rng.torch"])
            self.rng.bit_generator.state = info["numpy_rng"]
            self.scaler.load_state_dict(info["scaler"])
        except (KeyError, TypeError, ValueError, IndexError, AttributeError, RuntimeError, OSError, SafetensorError,
                LabelShareError) as error:
            reason = f"{error} missing" if isinstance(error, KeyError) else \
                (str(error).strip().splitlines() or [type(error).__name__])[0][:200]
            raise LabelShareError(f"{folder}: the checkpoint is damaged ({reason}); delete {self.workdir} to start "
                                  "the run over") from None
        return state

    def has_checkpoint(self) -> bool:
        return (self.checkpoint_dir() / "checkpoint.json").is_file()

    # -- the loop -----------------------------------------------------------------------------------------------------
    def run(self, resume: bool = False, on_epoch: Callable[[dict], None] | None = None) -> TrainingState:
        config = self.config
        state = self.load_checkpoint() if resume and self.has_checkpoint() else TrainingState()
        if state.step:
            self.progress.log(f"resuming at step {state.step}/{config.total_steps}")
        start_fraction, end_fraction = self.fraction_range
        losses: list[float] = []
        with StopRequest() as stop:
            started = time.monotonic() - state.elapsed_s
            resumed_at, resumed_elapsed = state.step, state.elapsed_s
            while state.step < config.total_steps:
                losses.append(self.train_step(state.step))
                state.step += 1
                state.elapsed_s = time.monotonic() - started
                rate = (state.elapsed_s - resumed_elapsed) / max(1, state.step - resumed_at)
                eta = rate * (config.total_steps - state.step)
                epoch = math.ceil(state.step / config.steps_per_epoch)
                fraction = start_fraction + (end_fraction - start_fraction) * state.step / config.total_steps
                self.progress.progress("training", fraction,
                                       f"epoch {epoch}/{config.epochs} step {state.step}/{config.total_steps} "
                                       f"loss {losses[-1]:.4f}", epoch=epoch, epochs=config.epochs,
                                       step=state.step, steps=config.total_steps, loss=round(losses[-1], 5),
                                       eta_s=round(eta, 1))
                if state.step % config.steps_per_epoch == 0:
                    record = {"epoch": epoch, "step": state.step, "loss": float(np.mean(losses)),
                              "learning_rate": self.learning_rate(state.step - 1),
                              "elapsed_s": round(state.elapsed_s, 2)}
                    if self.context.is_main and self.validation_banks:
                        record["validation_dice"] = self.validate()
                        record["mean_validation_dice"] = _mean_dice(record["validation_dice"])
                    losses = []
                    state.history.append(record)
                    self.save_checkpoint(state)
                    self.progress.metrics("epoch", **record, eta_s=round(eta, 1),
                                          message=f"epoch {epoch}/{config.epochs}: loss {record['loss']:.4f}"
                                          + (f", validation Dice {record['mean_validation_dice']:.3f}"
                                             if "mean_validation_dice" in record else "")
                                          + f", ETA {format_duration(eta)}")
                    if on_epoch is not None:
                        on_epoch(record)
                    self.context.barrier()
                if self.context.any_flag(stop.signal_number is not None, self.device):
                    self.save_checkpoint(state)
                    self.context.barrier()
                    raise TrainingInterrupted(
                        f"interrupted by {stop.signal_name} at step {state.step}/{config.total_steps}; checkpoint "
                        f"saved in {self.checkpoint_dir()}; repeat the command with --resume to continue")
        return state


def _save_tensors(tensors: dict[str, torch.Tensor], path: Path) -> None:
    """A safetensors file of the checkpoint, written atomically and read back before it counts."""
    with atomic_path(path, verify=lambda tmp: tensors_problem(tmp, tensors)) as tmp:
        try:
            save_file(tensors, str(tmp))
        except SafetensorError as error:
            raise not_written(path, str(error)) from None


def _mean_dice(per_task: dict[str, dict[str, float]]) -> float:
    values = [v for labels in per_task.values() for v in labels.values() if v == v]
    return float(np.mean(values)) if values else float("nan")


def _unique_state(network: torch.nn.Module) -> dict[str, torch.Tensor]:
    """State dict with aliased tensors (same storage under two names) kept once."""
    seen, unique = set(), {}
    for key, value in network.state_dict().items():
        pointer = (value.data_ptr(), value.shape, value.stride()) if value.numel() else (key,)
        if pointer not in seen:
            seen.add(pointer)
            unique[key] = value
    return unique


def _load_unique_state(network: torch.nn.Module, weights: dict[str, torch.Tensor]) -> None:
    own = _unique_state(network)
    missing = set(own) - set(weights)
    if missing:
        raise LabelShareError(f"checkpoint lacks {len(missing)} tensors (e.g. {sorted(missing)[0]})")
    with torch.no_grad():
        for key, value in own.items():
            value.copy_(weights[key])
