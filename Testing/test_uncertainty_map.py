"""The uncertainty map (labelshare.engine.uncertainty, Segmenter.segment_case): on the input's grid, high where the
probabilities are ambiguous; written by ``labelshare segment --uncertainty`` and the worker's ``uncertainty`` field,
refused for a format that cannot hold it."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from labelshare import cli
from labelshare.core.outputs import sidecar_path
from labelshare.engine.inference import Segmenter
from labelshare.engine.models import load_model
from labelshare.engine.uncertainty import UNCERTAINTY_MEASURE
from labelshare.engine.worker import serve

TASK = "phantom3d"


def ambiguous_probabilities(stacks: np.ndarray, channels: int) -> torch.Tensor:
    """Probabilities that follow the raw intensity of the (n, c, h, w) input stacks' centre slices: background below
    0.4, label 1 above 0.6, and between them an even split of the two (the ambiguous region)."""
    values = torch.tensor(np.asarray(stacks[:, stacks.shape[1] // 2], dtype=np.float32))
    foreground = ((values - 0.4) / 0.2).clamp(0, 1)
    foreground = torch.where((values > 0.45) & (values < 0.55), torch.full_like(values, 0.5), foreground.round())
    probabilities = torch.zeros((values.shape[0], channels, *values.shape[1:]))
    probabilities[:, 0], probabilities[:, 1] = 1 - foreground, foreground
    return probabilities


def test_the_map_lies_on_the_input_grid_and_is_high_where_the_probabilities_are_ambiguous(tiny_model, monkeypatch):
    model = load_model(tiny_model, "cpu")
    channels = len(model.task_labels(TASK)) + 1
    segmenter = Segmenter(model)
    monkeypatch.setattr(segmenter, "probability_views",
                        lambda stacks, *args, **kwargs: [ambiguous_probabilities(stacks, channels)])
    # anisotropic, oblique, sliced along x (its spacing is the largest): the map must come back on this grid
    array = np.zeros((12, 20, 9), dtype=np.float32)  # (z, y, x)
    array[:, 5:15, 2:7] = 1.0
    array[:, 8:12, 3:6] = 0.5  # the ambiguous region
    image = sitk.GetImageFromArray(array)
    image.SetSpacing((3.0, 0.8, 1.2))
    image.SetOrigin((4.0, -2.0, 7.5))
    image.SetDirection((0.0, 1.0, 0.0, -1.0, 0.0, 0.0, 0.0, 0.0, 1.0))
    assert segmenter.slice_batches(image, TASK).axis == 2

    result = segmenter.segment_case(image, TASK, uncertainty_map=True)
    uncertainty = result.uncertainty_map
    assert uncertainty.GetSize() == image.GetSize() and uncertainty.GetSpacing() == image.GetSpacing()
    assert uncertainty.GetOrigin() == image.GetOrigin() and uncertainty.GetDirection() == image.GetDirection()
    values = sitk.GetArrayFromImage(uncertainty)
    assert values.dtype == np.float32
    ambiguous = array == 0.5
    expected = np.log(2) / np.log(channels)  # an even split of two of the channels
    np.testing.assert_allclose(values[ambiguous], expected, atol=1e-5)
    assert values[~ambiguous].max() < 1e-3
    labels = sitk.GetArrayFromImage(result.labels)
    assert (labels[array == 1.0] == model.task_labels(TASK)[0][0]).all() and (labels[array == 0] == 0).all()


def case_image(tasks) -> str:
    return str(sorted((tasks[TASK] / "imagesTr").iterdir())[0])


def test_segment_writes_the_map_beside_the_output_and_records_it(tiny_model, synthetic_tasks, tmp_path, capsys):
    image = case_image(synthetic_tasks)
    status = cli.main(["segment", "--model", str(tiny_model), "--task", TASK, image, "-o", str(tmp_path / "out.nrrd"),
                       "--uncertainty", str(tmp_path / "uncertainty.nii.gz"), "--device", "cpu"])
    assert status == 0, capsys.readouterr().err
    source, written = sitk.ReadImage(image), sitk.ReadImage(str(tmp_path / "uncertainty.nii.gz"))
    assert written.GetSize() == source.GetSize() and written.GetPixelID() == sitk.sitkFloat32
    np.testing.assert_allclose(written.GetSpacing(), source.GetSpacing())
    np.testing.assert_allclose(written.GetOrigin(), source.GetOrigin())
    values = sitk.GetArrayFromImage(written)
    assert values.min() >= 0 and values.max() <= 1 and values.max() > 0
    record = json.loads(sidecar_path(tmp_path / "out.nrrd").read_text())["uncertainty"]
    assert record["file"] == str((tmp_path / "uncertainty.nii.gz").resolve())
    assert record["measure"] == UNCERTAINTY_MEASURE and len(record["sha256"]) == 64


@pytest.mark.parametrize("name, reason", [
    ("map.png", "PNG holds 8- or 16-bit whole numbers, not the uncertainty's values from 0 to 1"),
    ("map.seg.nrrd", "the uncertainty map is an image of values from 0 to 1, not a segmentation"),
])
def test_a_format_that_cannot_hold_the_map_is_refused_before_anything_runs(tiny_model, synthetic_tasks, tmp_path,
                                                                           capsys, name, reason):
    status = cli.main(["segment", "--model", str(tiny_model), "--task", TASK, case_image(synthetic_tasks), "-o",
                       str(tmp_path / "out.nii.gz"), "--uncertainty", str(tmp_path / name), "--device", "cpu"])
    err = capsys.readouterr().err
    assert status != 0 and f"labelshare: error: {tmp_path / name}: {reason}" in err
    assert "Traceback" not in err and not list(tmp_path.iterdir())


def test_the_worker_writes_the_map_a_request_asks_for(tiny_model, synthetic_tasks, tmp_path):
    request = {"id": 1, "model": str(tiny_model), "task": TASK, "input": case_image(synthetic_tasks),
               "output": str(tmp_path / "out.nii.gz"), "uncertainty": str(tmp_path / "map.nrrd"), "device": "cpu"}
    stream = io.StringIO()
    assert serve(io.StringIO(json.dumps(request) + "\n"), stream) == 0
    events = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert events[-1]["event"] == "done", events[-1]
    written = sitk.ReadImage(str(tmp_path / "map.nrrd"))
    assert written.GetSize() == sitk.ReadImage(case_image(synthetic_tasks)).GetSize()
