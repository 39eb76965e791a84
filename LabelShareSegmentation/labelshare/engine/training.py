"""Training: the loss, the loop and its checkpoints (the data and its patches are :mod:`labelshare.engine.sampling`).

Every step draws one task-balanced batch; each task's patches (their own size, from the task's plan) go through
the network separately and their gradients add up before one optimiser step (a task's loss is weighted 1/number
of tasks in the batch), so tasks of different resolutions train together without padding them to one size.

Checkpoints are written after every epoch and on SIGINT/SIGTERM into ``<staging>/.checkpoint/`` (weights and
optimiser state in safetensors, counters and random states in JSON, JSON written last so that it always points to
complete files). ``resume=True`` continues from there; a run stopped by a signal raises
:class:`~labelshare.core.errors.TrainingInterrupted` after saving. Under ``torchrun`` (WORLD_SIZE > 1) the loop runs
with DistributedDataParallel: every rank draws its own samples (seed + rank), rank 0 validates, logs and checkpoints.
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

from ..core.config import InferenceConfig, TrainConfig
from ..core.errors import LabelShareError, TrainingInterrupted, stop_at_once
from ..core.fileio import atomic_path, atomic_write_json, not_written, read_json
from ..core.layouts import TaskHead
from ..core.naming import check_name
from ..core.progress import Progress, format_duration
from .metrics import dice_per_label
from .models import tensors_problem
from .sampling import Augmenter, PatchSampler, TaskBatch, TaskSlices
from .slices import head_probabilities

CHECKPOINT_DIR = ".checkpoint"  # hidden: not part of the finished model folder or its manifest
MONITOR_CASES = 8  # validation cases per task scored after every epoch (all of them are scored at the end)


# -- loss -------------------------------------------------------------------------------------------------------------
class SegmentationLoss:
    """Cross-entropy + Dice of one task's patches.

    The task's softmax covers its head's channels; Dice (MONAI, batch Dice) covers only the positions holding one of
    the task's labels, so a shared label that a task does not use is trained towards background by the
    cross-entropy alone.
    """

    def __init__(self):
        self.dice = DiceLoss(include_background=True, softmax=False, batch=True, smooth_nr=1e-5, smooth_dr=1e-5)

    def __call__(self, logits: torch.Tensor, batch: TaskBatch) -> torch.Tensor:
        head = batch.head
        task_logits = logits.float()
        if not head.all_channels or task_logits.shape[1] != len(head.channels):
            task_logits = task_logits[:, head.channels]
        cross_entropy = F.cross_entropy(task_logits, batch.targets)
        probabilities = task_logits.softmax(dim=1)
        positions = head.label_positions
        one_hot = F.one_hot(batch.targets, len(head.channels)).permute(0, 3, 1, 2).float()
        return cross_entropy + self.dice(probabilities[:, positions], one_hot[:, positions])


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
    epoch_losses: list[float] = field(default_factory=list)  # the steps of the epoch in progress


class StopRequest:
    """Turns SIGINT/SIGTERM into a flag checked after every step, so that the run can save before exiting; a second
    signal ends the process at once (:func:`~labelshare.core.errors.stop_at_once`: the last checkpoint stays)."""

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
        if self.signal_number is not None:
            stop_at_once(number)
        self.signal_number = number

    def __exit__(self, *exc) -> None:
        for number, handler in self._previous.items():
            signal.signal(number, handler)


class Trainer:
    """Runs the training loop on the tasks' slices at plan resolution; subclass and override :meth:`loss` to add
    terms (e.g. distillation for incremental learning)."""

    def __init__(self, network: torch.nn.Module, heads: dict[str, TaskHead], train_banks: list[TaskSlices],
                 validation_banks: list[TaskSlices], config: TrainConfig, workdir: Path, progress: Progress,
                 context: DistributedContext | None = None, run_identity: dict | None = None,
                 fraction_range: tuple[float, float] = (0.0, 1.0)):
        self.config = config
        self.context = context or DistributedContext()
        self.device = training_device(config, self.context)
        self.network = network.to(self.device)
        self.heads = heads
        self.train_banks = [bank for bank in train_banks if len(bank)]
        self.validation_banks = validation_banks
        self.workdir = workdir
        self.progress = progress if self.context.is_main else Progress("quiet")
        self.run_identity = run_identity or {}
        self.fraction_range = fraction_range
        self.rng = np.random.default_rng([config.seed, self.context.rank])
        self.input_channels = network.config.in_channels
        self.sampler = PatchSampler(self.train_banks, [heads[bank.task] for bank in self.train_banks],
                                    self._local_batch_size(), config.foreground_oversampling, self.rng,
                                    self.task_shares(self.train_banks), self.input_channels)
        self.augmenter = Augmenter(self.rng, config.intensity_augmentation)
        self.criterion = SegmentationLoss()
        self.optimizer = torch.optim.AdamW(self.network.parameters(), lr=config.learning_rate,
                                           weight_decay=config.weight_decay)
        self.autocast_dtype = None
        if self.device.type == "cuda" and config.amp:
            self.autocast_dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.autocast_dtype == torch.float16)
        self.windows_per_batch = InferenceConfig().batch_size_on(self.device.type)  # validation: as inference does
        self.model = self.network
        if self.context.enabled:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.model = torch.nn.parallel.DistributedDataParallel(self.network, device_ids=ids)

    def task_shares(self, banks: list[TaskSlices]) -> list[float] | None:
        """Each task's share of a batch: ``config.task_weights`` (tasks not named weigh 1); None: equal shares
        (subclasses weight tasks differently)."""
        if not self.config.task_weights:
            return None
        return [float(self.config.task_weights.get(bank.task, 1.0)) for bank in banks]

    def _local_batch_size(self) -> int:
        return max(1, self.config.batch_size // self.context.world_size)

    def learning_rate(self, step: int) -> float:
        """nnU-Net's polynomial decay (exponent 0.9) after a short linear warm-up."""
        warmup = min(50, self.config.total_steps // 10)
        if step < warmup:
            return self.config.learning_rate * (step + 1) / warmup
        return self.config.learning_rate * (1 - step / self.config.total_steps) ** 0.9

    def loss(self, logits: torch.Tensor, batch: TaskBatch) -> torch.Tensor:
        return self.criterion(logits, batch)

    def train_step(self, step: int) -> float:
        """One optimiser step over one batch: every task's patches forward and backward in turn, gradients
        accumulated (synchronised across DDP ranks on the last task only)."""
        self.network.train()
        for group in self.optimizer.param_groups:
            group["lr"] = self.learning_rate(step)
        batches = self.sampler.sample(self.device)
        if self.config.augment:
            batches = [self.augmenter(batch) for batch in batches]
        self.optimizer.zero_grad(set_to_none=True)
        total = 0.0
        for index, batch in enumerate(batches):
            last = index == len(batches) - 1
            synchronise = nullcontext() if last or not self.context.enabled else self.model.no_sync()
            autocast = (torch.autocast(self.device.type, dtype=self.autocast_dtype) if self.autocast_dtype
                        else nullcontext())
            with synchronise:
                with autocast:
                    logits = self.model(batch.images, batch.task_index)
                loss = self.loss(logits, batch) / len(batches)
                self.scaler.scale(loss).backward()
            total += float(loss.detach())
        self.scaler.unscale_(self.optimizer)
        torch.nn.utils.clip_grad_norm_(self.network.parameters(), 12.0)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return total

    @torch.no_grad()
    def validate(self) -> dict[str, dict[str, float]]:
        """Mean per-case Dice of every label at plan resolution, per task, predicted with the inference windows, on
        up to :data:`MONITOR_CASES` validation cases spread over each task's list (a monitor of the learning curve;
        every validation case is scored at native resolution at the end by
        :func:`labelshare.engine.evaluation.evaluate_cases`)."""
        self.network.eval()
        result: dict[str, dict[str, float]] = {}
        for bank in self.validation_banks:
            head = self.heads[bank.task]
            per_label: dict[int, list[float]] = {p: [] for p in head.label_positions}
            chosen = np.unique(np.linspace(0, len(bank.cases) - 1, min(MONITOR_CASES, len(bank.cases))).astype(int))
            for case in chosen:
                rows = bank.labelled_slices(case)
                stacks = bank.plan.stacks(bank.images[case], rows, self.input_channels)
                target = bank.targets[case][rows]
                probabilities = head_probabilities(self.network, torch.from_numpy(stacks).float().to(self.device),
                                                   head, bank.plan, mirror=False,
                                                   windows_per_batch=self.windows_per_batch,
                                                   autocast_dtype=self.autocast_dtype)
                prediction = probabilities.max(dim=1).indices.cpu().numpy()
                for position, value in dice_per_label(prediction, target, head.label_positions).items():
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
            "epoch_losses": state.epoch_losses, "optimizer_slots": slots,
            "param_groups": optimizer_state["param_groups"],
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
            state = TrainingState(step=step, history=list(info["history"]), elapsed_s=float(info["elapsed_s"]),
                                  epoch_losses=[float(loss) for loss in info.get("epoch_losses", [])])
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
        losses = state.epoch_losses  # a run stopped within an epoch logs that epoch's loss over all its steps
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
                    losses.clear()
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
