"""Training data: every task's slices at its plan's resolution, task-balanced patch batches with foreground
oversampling, and batched augmentation on the training device.

All training data of the supported task sizes fits in memory at plan resolution (float16 images, uint8 targets), so
there is no data loader: patches are cropped from memory and augmented on the training device.

Sampling (nnU-Net's scheme, per task): each batch holds (about) the same number of patches of every task (or the
shares a caller gives, e.g. more for a task being added to a trained model); a third
of a task's patches (``foreground_fraction``) are centred near a pixel of one of the task's labels, the label chosen
uniformly among the labels (so a small structure is seen as often as a large one), the rest are cropped at random
from random slices. A slice smaller than the patch is padded (image: its minimum; target: background). A patch's
image is the slice's input stack (with its neighbours, for a plan of slice context:
:meth:`labelshare.core.plans.TaskPlan.stacks`), its target the slice's labels.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from monai.transforms import GaussianSmooth, RandHistogramShift

from ..core.layouts import TaskHead
from ..core.plans import TaskPlan
from ..core.preprocessing import iter_case_slices
from ..core.progress import Progress
from ..core.tasks import TaskDataset
from .slices import to_plan


@dataclass
class TaskSlices:
    """One task's slices at plan resolution, per case: ``images[c]`` (n, H, W) float16 and ``targets[c]``
    (n, H, W) uint8 holding positions in the task's head; ``rows`` lists (case, slice) of every labelled slice:
    every slice, or (``labelled``) per case the slices that are (a rehearsal memory's exemplar is a "case" of the
    slices its input stack needs, of which only the middle one is labelled: :func:`labelshare.engine.memory.
    memory_slices`)."""

    task: str
    plan: TaskPlan
    cases: list[str]
    images: list[np.ndarray]
    targets: list[np.ndarray]
    flip_allowed: bool
    labelled: list[list[int]] | None = None

    def __post_init__(self):
        self.rows = np.array([(c, s) for c in range(len(self.targets)) for s in self.labelled_slices(c)],
                             dtype=np.int64).reshape(-1, 2)
        positions = max((int(t.max()) for t in self.targets if t.size), default=0)
        present = [np.array([(self.targets[c][s] == p).any() for c, s in self.rows], dtype=bool)
                   for p in range(positions + 1)]
        # rows of the slices holding each label position (1..); position 0 (background) is not oversampled
        self.rows_with = {p: np.flatnonzero(present[p]) for p in range(1, positions + 1) if present[p].any()}

    def __len__(self) -> int:
        return len(self.rows)

    def labelled_slices(self, case: int) -> list[int]:
        """The indices of the labelled slices of a case (its rows)."""
        return list(range(self.targets[case].shape[0])) if self.labelled is None else self.labelled[case]

    def joined(self, other: TaskSlices | None) -> TaskSlices:
        """These slices and ``other``'s (cases of the same task at the same plan; None: these alone)."""
        if other is None:
            return self
        both = [self, other]
        labelled = None if self.labelled is None and other.labelled is None else \
            [bank.labelled_slices(c) for bank in both for c in range(len(bank.cases))]
        return TaskSlices(task=self.task, plan=self.plan, cases=self.cases + other.cases,
                          images=self.images + other.images, targets=self.targets + other.targets,
                          flip_allowed=self.flip_allowed, labelled=labelled)

    def select(self, case_names: Sequence[str]) -> TaskSlices:
        keep = [i for i, name in enumerate(self.cases) if name in set(case_names)]
        return TaskSlices(task=self.task, plan=self.plan, cases=[self.cases[i] for i in keep],
                          images=[self.images[i] for i in keep], targets=[self.targets[i] for i in keep],
                          flip_allowed=self.flip_allowed,
                          labelled=None if self.labelled is None else [self.labelled[i] for i in keep])


def load_task_slices(task: TaskDataset, case_names: Sequence[str], head: TaskHead, plan: TaskPlan,
                     progress: Progress | None = None, fraction_range: tuple[float, float] = (0.0, 0.0)
                     ) -> TaskSlices:
    """Read, normalise and resample the given cases of a task to its plan (by the plan's schemes)."""
    images, targets, names = [], [], []
    lut = torch.from_numpy(head.target_lut)
    resampling = plan.preprocessing.resampling_scheme
    for i, case in enumerate(iter_case_slices(task, case_names, plan.preprocessing)):
        image = to_plan(case.image[:, None], case.spacing, plan, "cpu")[:, 0]  # training data stays in memory
        target = resampling.labels(lut[torch.from_numpy(case.label.astype(np.int64))], image.shape[-2:],
                                   len(head.channels))
        images.append(image.to(torch.float16).numpy())
        targets.append(target.to(torch.uint8).numpy())
        names.append(case.name)
        if progress is not None:
            start, end = fraction_range
            progress.progress("loading", start + (end - start) * (i + 1) / max(1, len(case_names)),
                              f"{task.name}: loaded {i + 1}/{len(case_names)} cases")
    return TaskSlices(task=task.name, plan=plan, cases=names, images=images, targets=targets,
                      flip_allowed=not task.lateralised)


@dataclass
class TaskBatch:
    """The patches of one task in a batch (all of the task's patch size)."""

    head: TaskHead
    images: torch.Tensor      # (n, c, ph, pw) float32: c input channels (the slice stacks)
    targets: torch.Tensor     # (n, ph, pw) int64 positions in the head
    flip_allowed: bool

    @property
    def task_index(self) -> torch.Tensor:
        return torch.full((self.images.shape[0],), self.head.index, device=self.images.device, dtype=torch.int64)


def crop(image: np.ndarray, target: np.ndarray, patch: Sequence[int], top_left: Sequence[int]
         ) -> tuple[np.ndarray, np.ndarray]:
    """The ``patch`` of a slice's (c, h, w) input stack and (h, w) target starting at ``top_left`` (may be negative
    or run past the end: padded with the stack's minimum and background)."""
    out_image = np.full(image.shape[:-2] + tuple(patch), image.min(), dtype=np.float32)
    out_target = np.zeros(tuple(patch), dtype=np.int64)
    source, destination = [], []
    for start, size, length in zip(top_left, patch, target.shape, strict=True):
        low, high = max(0, start), min(length, start + size)
        source.append(slice(low, high))
        destination.append(slice(low - start, high - start))
    out_image[(..., *destination)] = image[(..., *source)]
    out_target[tuple(destination)] = target[tuple(source)]
    return out_image, out_target


class PatchSampler:
    """Draws task-balanced patch batches with foreground oversampling (see the module docstring).

    :param shares: each bank's share of a batch (default: equal shares); they are normalised to sum to 1.
    :param channels: the network's input channels (default: the widest slice context of the banks' plans).
    """

    def __init__(self, banks: Sequence[TaskSlices], heads: Sequence[TaskHead], batch_size: int,
                 foreground_fraction: float, rng: np.random.Generator, shares: Sequence[float] | None = None,
                 channels: int | None = None):
        self.banks, self.heads = list(banks), list(heads)
        self.channels = channels or max((bank.plan.slice_context for bank in self.banks), default=1)
        self.batch_size = batch_size
        self.foreground_fraction = foreground_fraction
        self.rng = rng
        weights = np.ones(len(self.banks)) if shares is None else np.asarray(shares, dtype=float)
        if weights.shape != (len(self.banks),) or (weights < 0).any() or weights.sum() <= 0:
            raise ValueError(f"shares {shares} do not fit {len(self.banks)} tasks")
        self.shares = weights / weights.sum()

    def counts(self) -> list[int]:
        """Patches of each task in the next batch: its share rounded down, the rest to tasks drawn (without
        replacement) in proportion to what rounding took from them."""
        expected = self.batch_size * self.shares
        counts = np.floor(expected).astype(int)
        remainder = self.batch_size - int(counts.sum())
        if remainder:
            fractions = expected - counts
            chosen = self.rng.choice(len(counts), remainder, replace=False, p=fractions / fractions.sum())
            counts[chosen] += 1
        return counts.tolist()

    def patch(self, bank: TaskSlices) -> tuple[np.ndarray, np.ndarray]:
        ph, pw = bank.plan.patch_size
        if bank.rows_with and self.rng.random() < self.foreground_fraction:
            position = list(bank.rows_with)[self.rng.integers(len(bank.rows_with))]
            case, index = bank.rows[self.rng.choice(bank.rows_with[position])]
            target = bank.targets[case][index]
            pixels = np.flatnonzero(target == position)
            row, column = np.unravel_index(pixels[self.rng.integers(len(pixels))], target.shape)
            top = row - self.rng.integers(ph)      # the chosen pixel lands anywhere in the patch
            left = column - self.rng.integers(pw)
            top = int(np.clip(top, min(0, target.shape[0] - ph), max(0, target.shape[0] - ph)))
            left = int(np.clip(left, min(0, target.shape[1] - pw), max(0, target.shape[1] - pw)))
        else:
            case, index = bank.rows[self.rng.integers(len(bank.rows))]
            target = bank.targets[case][index]
            top = self._random_start(target.shape[0], ph)
            left = self._random_start(target.shape[1], pw)
        stack = bank.plan.stacks(bank.images[case], [index], self.channels)[0]
        return crop(stack.astype(np.float32), target, (ph, pw), (top, left))

    def _random_start(self, length: int, size: int) -> int:
        """A random start of a window of ``size`` in ``length``; centred padding when the slice is smaller."""
        if length <= size:
            return -((size - length) // 2)
        return int(self.rng.integers(length - size + 1))

    def sample(self, device: torch.device) -> list[TaskBatch]:
        batches = []
        for bank, head, count in zip(self.banks, self.heads, self.counts(), strict=True):
            if count == 0:
                continue
            patches = [self.patch(bank) for _ in range(count)]
            images = torch.from_numpy(np.stack([p[0] for p in patches])).to(device)
            targets = torch.from_numpy(np.stack([p[1] for p in patches])).to(device)
            batches.append(TaskBatch(head=head, images=images, targets=targets, flip_allowed=bank.flip_allowed))
        return batches


class Augmenter:
    """Batched spatial and intensity augmentation on the training device.

    Spatial: rotation +-15 degrees, isotropic scale 0.85-1.25, translation +-6 %, left-right flip only for tasks
    that are not lateralised. Intensity (``intensity_augmentation``, :data:`labelshare.core.config.
    INTENSITY_AUGMENTATIONS`): ``standard``: brightness 0.75-1.25, contrast 0.75-1.25, gamma 0.7-1.5, Gaussian noise.
    ``scanner`` first adds what differs between films, digitisers and scanners: a random monotone intensity curve
    (MONAI's RandHistogramShift, 5-10 control points: a film's characteristic curve and a digitiser's look-up table)
    on 30 % of the patches and a Gaussian blur of 0.5-1.5 pixels (MONAI's GaussianSmooth: the digitiser's sharpness)
    on 20 %. Every random draw comes from ``rng``, so a resumed run repeats them.
    """

    def __init__(self, rng: np.random.Generator, intensity_augmentation: str, probability: float = 0.5):
        self.rng = rng
        self.probability = probability
        self.scanner = intensity_augmentation == "scanner"
        self.curve = RandHistogramShift(num_control_points=(5, 10), prob=1.0)

    def __call__(self, batch: TaskBatch) -> TaskBatch:
        n, device = batch.images.shape[0], batch.images.device
        rng = self.rng
        apply = rng.random(n) < self.probability
        angle = np.where(apply, rng.uniform(-np.pi / 12, np.pi / 12, n), 0.0)
        scale = np.where(apply, rng.uniform(0.85, 1.25, n), 1.0)
        shift = np.where(apply[:, None], rng.uniform(-0.06, 0.06, (n, 2)), 0.0)
        flip = np.full(n, batch.flip_allowed) & (rng.random(n) < 0.5)
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
        return TaskBatch(head=batch.head, images=self._intensity(images), targets=targets,
                         flip_allowed=batch.flip_allowed)

    def _intensity(self, images: torch.Tensor) -> torch.Tensor:
        n, device, rng = images.shape[0], images.device, self.rng

        def per_sample(values: np.ndarray) -> torch.Tensor:
            return torch.from_numpy(values.astype(np.float32)).to(device)[:, None, None, None]

        if self.scanner:
            images = self._scanner(images)
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

    def _scanner(self, images: torch.Tensor) -> torch.Tensor:
        """The film and scanner changes (see the class docstring) on some of the (n, c, h, w) patches."""
        rng, images = self.rng, images.clone()
        curved = rng.random(images.shape[0]) < 0.3
        blurred = rng.random(images.shape[0]) < 0.2
        sigmas = rng.uniform(0.5, 1.5, images.shape[0])
        for index in np.flatnonzero(curved | blurred):
            image = images[index]
            if curved[index] and image.max() > image.min():  # a uniform patch has no curve to change
                self.curve.set_random_state(seed=int(rng.integers(2**31)))
                image = self.curve(image)
            if blurred[index]:
                image = GaussianSmooth(sigma=float(sigmas[index]))(image)
            images[index] = torch.as_tensor(image)
        return images
