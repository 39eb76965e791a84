"""Segmentation: output on exactly the input's grid, in the task's own label ids, through Python and the CLI."""

import subprocess
import sys

import numpy as np
import pytest
import SimpleITK as sitk

from labelshare.cli import build_parser
from labelshare.commands import segment_config_from
from labelshare.core.config import InferenceConfig, SegmentConfig
from labelshare.core.errors import LabelShareError, UnknownTaskError
from labelshare.core.progress import Progress, parse_event
from labelshare.engine.inference import Segmenter, keep_largest_components
from labelshare.engine.models import load_model
from labelshare.engine.segment_run import segment_file


def _image(size, spacing, origin, direction, dtype=np.float32):
    rng = np.random.default_rng(1)
    image = sitk.GetImageFromArray(rng.normal(100, 30, tuple(reversed(size))).astype(dtype))
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    image.SetDirection(direction)
    return image


OBLIQUE = sitk.VersorTransform((1, 2, 3), 0.4).GetMatrix()


@pytest.mark.parametrize("image", [
    _image((20, 17, 9), (0.7, 0.8, 3.5), (-12.5, 40.0, 7.25), OBLIQUE),        # oblique, anisotropic: slices along z
    _image((6, 21, 19), (4.0, 0.9, 0.9), (1.0, 2.0, 3.0), OBLIQUE),           # largest spacing along x
    _image((23, 1, 19), (0.5, 1.0, 0.5), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1)),   # single-slice projection
    _image((31, 22), (0.3, 0.3), (5.0, -5.0), (0, 1, 1, 0), dtype=np.uint8),  # 2D projection (flipped axes)
], ids=["oblique-z", "oblique-x", "single-slice", "2d"])
def test_output_has_the_input_geometry_and_task_label_ids(tiny_model, image):
    model = load_model(tiny_model, device="cpu")
    result = Segmenter(model).segment(image, "phantom3d")
    assert result.GetSize() == image.GetSize()
    assert result.GetSpacing() == image.GetSpacing()
    assert result.GetOrigin() == image.GetOrigin()
    assert result.GetDirection() == image.GetDirection()
    assert set(np.unique(sitk.GetArrayViewFromImage(result))) <= {0, 1, 2, 3}


def test_shared_labels_are_remapped_to_each_tasks_own_ids(tiny_model):
    model = load_model(tiny_model, device="cpu")
    space = model.labelspace
    for task in model.tasks:
        lut = model.heads[task].output_lut
        assert len(lut) == space.n_shared + 1
        for label in space.task(task).labels:
            assert lut[label.shared] == label.id
        unused = set(range(1, space.n_shared + 1)) - {label.shared for label in space.task(task).labels}
        assert all(lut[k] == 0 for k in unused)      # another task's shared label reads as background
    with pytest.raises(UnknownTaskError, match="known tasks: phantom3d, sides3d, xray2d"):
        Segmenter(model).segment(_image((8, 8, 3), (1, 1, 1), (0, 0, 0), (1, 0, 0, 0, 1, 0, 0, 0, 1)), "liver")


def test_largest_component_keeps_one_component_per_label():
    array = np.zeros((1, 10, 10), dtype=np.uint8)
    array[0, 0:3, 0:3] = 1       # 9 px
    array[0, 7:9, 7:9] = 1       # 4 px, removed
    array[0, 5, 0:4] = 2         # 4 px
    image = sitk.GetImageFromArray(array)
    result = sitk.GetArrayFromImage(keep_largest_components(image, [1, 2]))
    assert (result == 1).sum() == 9 and (result == 2).sum() == 4 and result[0, 8, 8] == 0


def test_segment_file_emits_progress_and_writes_atomically(tiny_model, tmp_path, synthetic_tasks):
    events = []
    source = next((synthetic_tasks["phantom3d"] / "imagesTr").iterdir())
    output = segment_file(tiny_model, SegmentConfig.from_options(task="phantom3d", device="cpu", batch_size=4),
                          source, tmp_path / "out.nii.gz", progress=Progress("quiet", callback=events.append))
    fractions = [e["fraction"] for e in events if e["event"] == "progress" and e["stage"] == "segmenting"]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0 and len(fractions) >= 3
    assert sitk.ReadImage(str(output)).GetSize() == sitk.ReadImage(str(source)).GetSize()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.json", "out.nii.gz"]  # no temporary files left


def test_segment_mirrors_when_asked_and_refuses_to_mirror_a_lateralised_task(tiny_model, tmp_path, synthetic_tasks):
    """``segment_file`` (the command line's and the Slicer worker's way in) averages with the left-right mirrored
    prediction with ``mirror`` (``--tta``); a lateralised task refuses it (issue 31: one rule, never ignored)."""
    model = load_model(tiny_model, device="cpu")

    def labels(task, **options):
        source = next((synthetic_tasks[task] / "imagesTr").iterdir())
        output = segment_file(model, SegmentConfig.from_options(task=task, device="cpu", **options), source,
                              tmp_path / f"{task}-{len(list(tmp_path.iterdir()))}.nii.gz")
        return sitk.GetArrayFromImage(sitk.ReadImage(str(output)))

    plain, mirrored = labels("xray2d"), labels("xray2d", mirror=True)
    assert np.array_equal(plain, labels("xray2d", mirror=False))  # the network alone unless asked
    assert not np.array_equal(mirrored, plain)  # xray2d is not lateralised: mirrored when asked
    with pytest.raises(LabelShareError, match="task 'sides3d' is lateralised .* cannot be used for it"):
        labels("sides3d", mirror=True)
    with pytest.raises(LabelShareError, match="sides3d' is lateralised"):  # the segmenter itself keeps the rule
        Segmenter(model, InferenceConfig(mirror=True)).segment(
            sitk.ReadImage(str(next((synthetic_tasks["sides3d"] / "imagesTr").iterdir()))), "sides3d")
    parser = build_parser()
    for command in (["segment", "--task", "t", "in.nii.gz", "-o", "out.nii.gz"],
                    ["evaluate", "--model", "m", "--task", "t", "--data", "d"]):
        assert parser.parse_args([*command, "--tta"]).mirror and not parser.parse_args(command).mirror
    assert segment_config_from(parser.parse_args(["segment", "--task", "t", "in", "-o", "o", "--tta"])).inference.mirror

def test_segment_command_end_to_end(tiny_model, tmp_path, synthetic_tasks):
    source = next((synthetic_tasks["xray2d"] / "imagesTr").iterdir())
    output = tmp_path / "xray_label.png"
    result = subprocess.run([sys.executable, "-m", "labelshare", "segment", "--model", str(tiny_model), "--task",
                             "xray2d", str(source), "-o", str(output), "--device", "cpu", "--progress", "json",
                             "--largest-component"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    events = [e for e in map(parse_event, result.stdout.splitlines()) if e]
    assert events[-1]["event"] == "done" and events[-1]["output"] == str(output)
    written, original = sitk.ReadImage(str(output)), sitk.ReadImage(str(source))
    assert written.GetSize() == original.GetSize()
    assert set(np.unique(sitk.GetArrayViewFromImage(written))) <= {0, 1, 2}
