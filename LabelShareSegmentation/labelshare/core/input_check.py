"""The input check: is an image like the images a task was trained on? A **warning, never a refusal**: the image is
segmented anyway, and the check says how unlike it is and why.

An image is measured while it is segmented (:mod:`labelshare.engine.input_check`: the same slices, normalisation,
windows and forward pass), in parts:

``geometry``     in-plane pixel spacing and field of view (rows and columns, mm) and the number of slices, against
                 the range of the training cases; the score is how far outside it the farthest one lies (the log of
                 the ratio: a spacing 4 times the largest seen scores log 4)
``intensity``    the distribution of the normalised intensities (their 1st to 99th percentiles): contrast inverted,
                 another modality, noise
``layout``       the mean normalised intensity on a 4 x 4 grid of the slices: where dark and bright parts lie
``features``     the network's bottleneck features (per window their mean and standard deviation over space, averaged
                 over the image's windows): another anatomy, modality or image quality, as the network sees it
``orientation``  the same features' top-minus-bottom and left-minus-right halves: an image flipped or rotated
``modality``     the DICOM Modality (0008,0060) of the image (a DICOM input, or a file that records the tag) against
                 the modality of the task's intended input (:func:`intended_modalities`)

Each vector part is scored by its Mahalanobis distance to the training cases (:class:`GaussianReference`: the
covariance shrunk half-way to a multiple of the identity, :data:`SHRINKAGE`, as few cases estimate a large
covariance badly). A part's score is divided by its **scale**, and the combined **score** is the largest of
these; the image is **warned** when it exceeds the **threshold**, or when its DICOM modality is not the task's.

**Calibration on cases the statistics were not fitted on.** A case the statistics were fitted on lies closer to
their mean than a new one: its own scores would set every threshold too low (the 95th percentile of the fitted
cases' scores warned every validation case of the bundled model). So the training cases are cross-fitted: split
into folds by patient (a patient's cases lie close together; a new patient is what the check sees), the
statistics fitted on the other folds score each fold, each part's scale is the conformal 95 % quantile of its
held-out scores (at least :data:`GEOMETRY_MIN_SCALE` for the geometry, whose held-out scores are mostly 0), and the
threshold is the conformal 95 % quantile of the combined held-out score: the ``ceil(0.95 (n + 1))``-th smallest
of ``n``, so that at most 5 % of new in-distribution cases are warned. The statistics stored are then fitted on all
the cases (each scored against statistics from more cases than in the calibration: on the safe side).

The statistics live in the model folder, made by every command that publishes a version (``train``, ``add-task``,
``postprocess``, ``labelshare memory`` for older models) from up to :data:`CALIBRATION_CASES` training cases per
task: :data:`INPUT_CHECK_FILE` (JSON: per task the ranges, scales, threshold and what they were made from) and
:data:`INPUT_CHECK_ARRAYS` (the Gaussian references' arrays, NumPy's ``.npz``, read without pickle), both hashed by
the manifest. They are not in ``labelspace.json``: that is made before a network exists (``labelspace build``) from
every case, while these depend on the network's weights and on the training split. A model without them (made
before them) still segments: the check runs what it can (the modality) and says which parts it could not run.

Light (numpy): the engine measures, this module stores, scores and explains.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .errors import ModelError
from .fileio import atomic_path, atomic_write_json, read_format_json

INPUT_CHECK_FILE = "input_check.json"
INPUT_CHECK_ARRAYS = "input_check.npz"
FORMAT = "labelshare.input_check"
FORMAT_VERSION = 1
CALIBRATION_CASES = 60  # training cases per task the statistics are made from (spread over the split's order)
FOLDS = 5  # cross-fitting folds (by patient; fewer when a task has fewer patients)
ALPHA = 0.05  # the share of in-distribution cases a threshold may warn
SHRINKAGE = 0.5  # of a Gaussian reference's covariance towards a multiple of the identity
MAX_COMPONENTS = 32  # principal components a Gaussian reference keeps (the rest: the identity's multiple)
GEOMETRY_MIN_SCALE = math.log(1.5)  # a spacing, field of view or slice count 1.5 times beyond the training range
MIN_PATIENTS = 2  # fewer patients cannot be cross-fitted: no statistics for the task

GEOMETRY = "geometry"
INTENSITY = "intensity"
LAYOUT = "layout"
FEATURES = "features"
ORIENTATION = "orientation"
MODALITY = "modality"
VECTOR_PARTS = (INTENSITY, LAYOUT, FEATURES, ORIENTATION)
PARTS = (GEOMETRY, *VECTOR_PARTS, MODALITY)
# What a part that warns says: what differs, and what that may mean (the geometry names its quantities itself)
PART_REASONS = {
    INTENSITY: ("its intensities are distributed unlike the training images'",
                "another modality, inverted contrast or noise?"),
    LAYOUT: ("its dark and bright parts lie elsewhere than in the training images", "another view or field of view?"),
    FEATURES: ("the network's features of it are unlike the training images'",
               "another anatomy, modality or image quality?"),
    ORIENTATION: ("the network sees it in another orientation than the training images", "flipped or rotated?"),
}
INTENSITY_PERCENTILES = (1, 5, 10, 25, 50, 75, 90, 95, 99)
LAYOUT_GRID = 4
# the geometry's quantities: name -> (what it is, unit)
GEOMETRY_QUANTITIES = {
    "spacing_rows": ("pixel spacing (rows)", "mm"),
    "spacing_columns": ("pixel spacing (columns)", "mm"),
    "extent_rows": ("field of view (rows)", "mm"),
    "extent_columns": ("field of view (columns)", "mm"),
    "slices": ("number of slices", ""),
}

# intended-input words → DICOM Modality codes (PS3.3 C.7.3.1.1.1); the first group that names the input wins over
# the generic X-ray group, so that a mammography task expects MG and not any radiograph
MODALITY_WORDS = (
    (r"mammogra", ("MG",)),
    (r"\bMRI?\b|magnetic resonance|\bT[12]\b|FLAIR", ("MR",)),
    (r"\bCT\b|computed tomography", ("CT",)),
    (r"ultrasound|\bUS\b|echocardiogra", ("US",)),
    (r"\bPET\b", ("PT",)),
    (r"SPECT|scintigra", ("NM",)),
    (r"angiogra|fluoroscop", ("XA", "RF")),
)
XRAY_WORDS = (r"x-?ray|radiogra", ("CR", "DX"))
MODALITY_TAG = "0008|0060"  # DICOM Modality, as SimpleITK names it in an image's metadata


def intended_modalities(modality: str) -> tuple[str, ...]:
    """DICOM Modality codes named by an intended-input text ("cine MRI" → MR; "X-ray (mammography)" → MG)."""
    codes = [code for pattern, group in MODALITY_WORDS if re.search(pattern, modality, re.IGNORECASE)
             for code in group]
    if not codes and re.search(XRAY_WORDS[0], modality, re.IGNORECASE):
        codes = list(XRAY_WORDS[1])
    return tuple(dict.fromkeys(codes))


# DICOM-like modality codes a MetaImage file's own Modality field may hold (MetaIO's names)
METAIO_MODALITIES = {"MET_MOD_CT": "CT", "MET_MOD_MR": "MR", "MET_MOD_NM": "NM", "MET_MOD_US": "US"}


def image_modality(image: Any) -> str:  # a SimpleITK image
    """The DICOM Modality an image records ('' when it records none): the tag (0008,0060) that GDCM reads from a
    DICOM file and that NRRD and MetaImage files keep, or a MetaImage file's own Modality field."""
    if image.HasMetaDataKey(MODALITY_TAG):
        return image.GetMetaData(MODALITY_TAG).strip().upper()
    if image.HasMetaDataKey("Modality"):
        return METAIO_MODALITIES.get(image.GetMetaData("Modality").strip(), "")
    return ""


def task_modality(intended_input: str) -> str:
    """The modality part of a task's intended input: its text up to the first ';' ("cine MRI (normalised)")."""
    return intended_input.split(";")[0].strip()


@dataclass
class CaseMeasurement:
    """What the check measured of one image: the geometry's quantities (:data:`GEOMETRY_QUANTITIES`), the vector
    parts it could measure (:data:`VECTOR_PARTS`; ``features`` and ``orientation`` only where the network's
    windows were seen) and the DICOM modality ('' when the image does not say)."""

    geometry: dict[str, float]
    vectors: dict[str, np.ndarray]
    modality: str = ""


@dataclass
class GaussianReference:
    """A Gaussian of vectors: their mean, the top principal components of their covariance (rows of
    ``components``, with their ``variances``) and the mean variance per dimension (``isotropic``); the distance of
    a vector is Mahalanobis's under the covariance shrunk by :data:`SHRINKAGE` towards ``isotropic`` times the
    identity (the components left out count as the isotropic part)."""

    mean: np.ndarray
    components: np.ndarray
    variances: np.ndarray
    isotropic: float

    @classmethod
    def fit(cls, vectors: np.ndarray) -> GaussianReference:
        vectors = np.asarray(vectors, dtype=np.float64)
        mean = vectors.mean(axis=0)
        centred = vectors - mean
        covariance = centred.T @ centred / len(vectors)
        isotropic = max(float(np.trace(covariance)) / covariance.shape[0], 1e-12)
        variances, components = np.linalg.eigh(covariance)
        keep = min(MAX_COMPONENTS, len(vectors) - 1, covariance.shape[0])
        order = np.argsort(variances)[::-1][:max(keep, 0)]
        return cls(mean, components[:, order].T, np.clip(variances[order], 0.0, None), isotropic)

    def distance(self, vector: np.ndarray) -> float:
        centred = np.asarray(vector, dtype=np.float64) - self.mean
        projected = self.components @ centred
        floor = SHRINKAGE * self.isotropic
        rest = max(float(centred @ centred - projected @ projected), 0.0)
        return math.sqrt(float(np.sum(projected ** 2 / ((1 - SHRINKAGE) * self.variances + floor))) + rest / floor)

    def arrays(self, prefix: str) -> dict[str, np.ndarray]:
        return {f"{prefix}/mean": self.mean.astype(np.float32), f"{prefix}/components":
                self.components.astype(np.float32), f"{prefix}/variances": self.variances.astype(np.float32),
                f"{prefix}/isotropic": np.asarray([self.isotropic], dtype=np.float32)}

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, np.ndarray], prefix: str) -> GaussianReference:
        mean, components = arrays[f"{prefix}/mean"].astype(np.float64), arrays[f"{prefix}/components"]
        variances, isotropic = arrays[f"{prefix}/variances"], arrays[f"{prefix}/isotropic"]
        if mean.ndim != 1 or components.ndim != 2 or components.shape[1] != mean.size or \
                variances.shape != (components.shape[0],) or isotropic.shape != (1,) or \
                not all(np.isfinite(a).all() for a in (mean, components, variances, isotropic)) or \
                isotropic[0] <= 0 or (variances < 0).any():
            raise ValueError(f"{prefix}: malformed Gaussian reference")
        return cls(mean, components.astype(np.float64), variances.astype(np.float64), float(isotropic[0]))


@dataclass
class GeometryReference:
    """The range (smallest, largest) of every geometry quantity over the training cases."""

    ranges: dict[str, tuple[float, float]]

    @classmethod
    def fit(cls, geometries: Sequence[Mapping[str, float]]) -> GeometryReference:
        return cls({name: (min(g[name] for g in geometries), max(g[name] for g in geometries))
                    for name in GEOMETRY_QUANTITIES})

    def outside(self, geometry: Mapping[str, float]) -> dict[str, float]:
        """Per quantity, how far outside its range the value lies (log of the ratio to the nearest end; 0 inside)."""
        result = {}
        for name, (low, high) in self.ranges.items():
            value = max(float(geometry[name]), 1e-9)
            result[name] = max(0.0, math.log(max(low, 1e-9) / value), math.log(value / max(high, 1e-9)))
        return result

    def score(self, geometry: Mapping[str, float]) -> float:
        return max(self.outside(geometry).values())

    def reasons(self, geometry: Mapping[str, float], limit: float) -> list[str]:
        """The quantities beyond ``limit`` (a score), with their training range."""
        reasons = []
        for name, distance in self.outside(geometry).items():
            if distance > limit:
                what, unit = GEOMETRY_QUANTITIES[name]
                low, high = self.ranges[name]
                reasons.append(f"its {what} is {_number(geometry[name])}{' ' + unit if unit else ''}, the training "
                               f"images' {_number(low)}" + (f" to {_number(high)}" if high != low else "")
                               + (f" {unit}" if unit else ""))
        return reasons


def _number(value: float) -> str:
    return f"{value:.3g}" if value != int(value) else str(int(value))


@dataclass
class TaskReference:
    """The statistics of one task: its references per part, each part's scale and the threshold of the combined
    score, what they were made from (cases, patients, folds), and each part's held-out scores of the calibration
    (:func:`calibrate`), from which the threshold of fewer parts is calibrated again (:meth:`without`)."""

    geometry: GeometryReference
    gaussians: dict[str, GaussianReference]
    scales: dict[str, float]
    threshold: float
    cases: int
    patients: int
    folds: int
    held_out: dict[str, list[float]]

    def without(self, parts: Sequence[str]) -> TaskReference:
        """These statistics without some vector parts, the threshold calibrated again on the others' held-out
        scores (a version whose weights changed keeps what does not depend on them: geometry, intensity, layout)."""
        kept = {part: reference for part, reference in self.gaussians.items() if part not in parts}
        held_out = {part: scores for part, scores in self.held_out.items() if part == GEOMETRY or part in kept}
        scales = {part: self.scales[part] for part in held_out}
        return TaskReference(self.geometry, kept, scales, combined_threshold(held_out, scales), self.cases,
                             self.patients, self.folds, held_out)

    def part_scores(self, measurement: CaseMeasurement) -> dict[str, float]:
        """Each part's score divided by its scale (the parts this reference and the measurement both have)."""
        scores = {GEOMETRY: self.geometry.score(measurement.geometry) / self.scales[GEOMETRY]}
        for part, reference in self.gaussians.items():
            if part in measurement.vectors:
                scores[part] = reference.distance(measurement.vectors[part]) / self.scales[part]
        return scores


@dataclass
class InputCheckResult:
    """The check of one image: the combined score and its threshold (None when no part with statistics ran),
    whether it is warned and why, each part's scaled score, and the parts that could not run with the reason."""

    score: float | None
    threshold: float | None
    warned: bool
    reasons: list[str] = field(default_factory=list)
    parts: dict[str, float] = field(default_factory=dict)
    not_run: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> dict:
        return {"score": None if self.score is None else round(self.score, 4),
                "threshold": None if self.threshold is None else round(self.threshold, 4), "warned": self.warned,
                "reasons": self.reasons, "parts": {part: round(value, 4) for part, value in self.parts.items()},
                "not_run": self.not_run}

    def message(self, task: str) -> str:
        """One line for a user: why the image looks unlike the task's training data ('' when it is not warned)."""
        if not self.warned:
            return ""
        score = f" (score {self.score:.2f}, threshold {self.threshold:.2f})" if self.score is not None else ""
        return f"unlike the training images of task {task}{score}: {'; '.join(self.reasons)}; check the result"


@dataclass
class InputCheckStatistics:
    """The statistics of every task a model has them for (:data:`INPUT_CHECK_FILE` and :data:`INPUT_CHECK_ARRAYS`),
    and why a task has none (``missing``: task -> reason)."""

    tasks: dict[str, TaskReference]
    missing: dict[str, str] = field(default_factory=dict)

    def write(self, folder: Path) -> None:
        """Both files into ``folder`` (a model's staging folder; the manifest hashes them), atomically."""
        arrays, tasks = {}, {}
        for name, reference in self.tasks.items():
            for part, gaussian in reference.gaussians.items():
                arrays.update(gaussian.arrays(f"{name}/{part}"))
            tasks[name] = {"cases": reference.cases, "patients": reference.patients, "folds": reference.folds,
                           "threshold": reference.threshold, "scales": reference.scales,
                           "gaussian_parts": list(reference.gaussians),
                           "geometry": {quantity: list(bounds)
                                        for quantity, bounds in reference.geometry.ranges.items()},
                           "held_out": {part: [round(value, 6) for value in scores]
                                        for part, scores in reference.held_out.items()}}
        with atomic_path(folder / INPUT_CHECK_ARRAYS, overwrite=True) as tmp:
            with open(tmp, "wb") as stream:
                np.savez(stream, **arrays)
        atomic_write_json(folder / INPUT_CHECK_FILE, {
            "format": FORMAT, "format_version": FORMAT_VERSION, "arrays": INPUT_CHECK_ARRAYS,
            "definition": "labelshare/core/input_check.py: per task, the parts' references fitted on its training "
                          f"cases; the parts' scales and the threshold cross-fitted over folds of patients (conformal "
                          f"{100 * (1 - ALPHA):.0f} % quantiles); Gaussian covariances shrunk by {SHRINKAGE} towards "
                          "the identity's multiple", "tasks": tasks, "missing": self.missing})

    @classmethod
    def read(cls, folder: Path) -> InputCheckStatistics | None:
        """The statistics of a model folder (None when it has none; it was made before them); ModelError naming
        the file when they cannot be read. The manifest was checked before (they are part of the folder)."""
        path = folder / INPUT_CHECK_FILE
        if not path.is_file():
            return None
        data = read_format_json(path, "input check statistics", FORMAT, FORMAT_VERSION, ModelError)
        arrays_path = folder / INPUT_CHECK_ARRAYS
        try:
            with np.load(arrays_path, allow_pickle=False) as stored:
                arrays = {key: stored[key] for key in stored.files}
            tasks = {}
            for name, entry in data["tasks"].items():
                geometry = GeometryReference({quantity: (float(entry["geometry"][quantity][0]),
                                                         float(entry["geometry"][quantity][1]))
                                              for quantity in GEOMETRY_QUANTITIES})
                gaussians = {part: GaussianReference.from_arrays(arrays, f"{name}/{part}")
                             for part in entry["gaussian_parts"] if part in VECTOR_PARTS}
                scales = {part: float(entry["scales"][part]) for part in (GEOMETRY, *gaussians)}
                if not all(math.isfinite(value) and value > 0 for value in scales.values()):
                    raise ValueError(f"task '{name}': scales must be positive")
                threshold = float(entry["threshold"])
                if not math.isfinite(threshold) or threshold <= 0:
                    raise ValueError(f"task '{name}': threshold must be positive")
                held_out = {part: [float(value) for value in entry["held_out"][part]] for part in scales}
                tasks[name] = TaskReference(geometry, gaussians, scales, threshold, int(entry["cases"]),
                                            int(entry["patients"]), int(entry["folds"]), held_out)
            missing = {str(name): str(reason) for name, reason in data.get("missing", {}).items()}
        except OSError as error:
            raise ModelError(f"{arrays_path}: cannot be read ({error})") from None
        except (KeyError, TypeError, ValueError, AttributeError) as error:  # np.load's damaged-file errors included
            raise ModelError(f"{path}: malformed input check statistics ({type(error).__name__}: {error})") from None
        return cls(tasks, missing)


def check_input(reference: TaskReference | None, measurement: CaseMeasurement, task: str, intended_input: str,
                missing_reason: str) -> InputCheckResult:
    """The check of one image of ``task`` against its statistics (None: the model has none for the task, and
    ``missing_reason`` says why) and the task's intended input (its modality)."""
    not_run: dict[str, str] = {}
    warned, reasons = False, []
    expected = intended_modalities(task_modality(intended_input))
    if not measurement.modality:
        not_run[MODALITY] = "the image does not say its modality (only DICOM images, and files that keep the DICOM " \
                            "Modality tag, do)"
    elif not expected:
        not_run[MODALITY] = f"the intended input of task {task} names no modality"
    elif measurement.modality.upper() not in expected:
        warned = True
        reasons.append(f"it is {measurement.modality.upper()} (its DICOM Modality), but task {task} was trained on "
                       f"{task_modality(intended_input)} ({'/'.join(expected)})")
    if reference is None:
        for part in (GEOMETRY, *VECTOR_PARTS):
            not_run[part] = missing_reason
        return InputCheckResult(None, None, warned, reasons, {}, not_run)
    for part in VECTOR_PARTS:
        if part not in reference.gaussians:
            not_run[part] = f"the model's statistics of task {task} have none (its images were not at hand when " \
                            "this version's weights were made)"
        elif part not in measurement.vectors:
            not_run[part] = "the network's windows were not seen"
    parts = reference.part_scores(measurement)
    score = max(parts.values())
    if score > reference.threshold:
        warned = True
        for part, value in sorted(parts.items(), key=lambda item: -item[1]):
            if value <= reference.threshold:
                continue
            if part == GEOMETRY:
                limit = reference.threshold * reference.scales[GEOMETRY]
                reasons += reference.geometry.reasons(measurement.geometry, limit)
            else:
                statement, hint = PART_REASONS[part]
                reasons.append(f"{statement} ({value / reference.threshold:.2f} times the limit; {hint})")
    return InputCheckResult(score, reference.threshold, warned, reasons, parts, not_run)


# -- calibration --------------------------------------------------------------------------------------------------
def patient_folds(patients: Sequence[str], folds: int = FOLDS) -> list[int]:
    """The fold of every case: whole patients per fold, patients dealt round-robin in their order of appearance."""
    order = list(dict.fromkeys(patients))
    count = min(folds, len(order))
    return [order.index(patient) % count for patient in patients]


def conformal_quantile(scores: Sequence[float], alpha: float = ALPHA) -> float:
    """The ``ceil((1 - alpha)(n + 1))``-th smallest of ``n`` held-out scores (the largest when there are fewer): a
    new case of the same distribution exceeds it with probability at most ``alpha``."""
    ordered = sorted(scores)
    rank = math.ceil((1 - alpha) * (len(ordered) + 1))
    return float(ordered[min(rank, len(ordered)) - 1])


def calibrate(measurements: Sequence[CaseMeasurement], patients: Sequence[str]) -> TaskReference:
    """A task's statistics from the measurements of its training cases (see the module docstring); ValueError when
    they hold fewer than :data:`MIN_PATIENTS` patients."""
    if len(set(patients)) < MIN_PATIENTS:
        raise ValueError(f"{len(set(patients))} patient(s): at least {MIN_PATIENTS} are needed to cross-fit")
    vector_parts = [part for part in VECTOR_PARTS if all(part in m.vectors for m in measurements)]
    folds = patient_folds(patients)
    held_out = {part: np.zeros(len(measurements)) for part in (GEOMETRY, *vector_parts)}
    for fold in sorted(set(folds)):
        fitted = [m for m, f in zip(measurements, folds, strict=True) if f != fold]
        scored = [i for i, f in enumerate(folds) if f == fold]
        geometry = GeometryReference.fit([m.geometry for m in fitted])
        held_out[GEOMETRY][scored] = [geometry.score(measurements[i].geometry) for i in scored]
        for part in vector_parts:
            gaussian = GaussianReference.fit(np.stack([m.vectors[part] for m in fitted]))
            held_out[part][scored] = [gaussian.distance(measurements[i].vectors[part]) for i in scored]
    scales = {part: max(conformal_quantile(scores), 1e-6) for part, scores in held_out.items()}
    scales[GEOMETRY] = max(scales[GEOMETRY], GEOMETRY_MIN_SCALE)
    held_out_lists = {part: scores.tolist() for part, scores in held_out.items()}
    return TaskReference(geometry=GeometryReference.fit([m.geometry for m in measurements]),
                         gaussians={part: GaussianReference.fit(np.stack([m.vectors[part] for m in measurements]))
                                    for part in vector_parts},
                         scales=scales, threshold=combined_threshold(held_out_lists, scales), cases=len(measurements),
                         patients=len(set(patients)), folds=len(set(folds)), held_out=held_out_lists)


def combined_threshold(held_out: Mapping[str, Sequence[float]], scales: Mapping[str, float]) -> float:
    """The threshold of the combined score: the conformal quantile of the held-out cases' largest scaled part."""
    return conformal_quantile(np.max([np.asarray(scores) / scales[part] for part, scores in held_out.items()],
                                     axis=0))
