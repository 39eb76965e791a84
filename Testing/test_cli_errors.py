"""Bad input: every case exits non-zero with one line naming the file or object and the problem, no traceback."""

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
import SimpleITK as sitk
from dicomfactory import mr_volume, remove_attribute, write_series
from taskfactory import blobs, write_task_folder

from labelshare.cli import main
from labelshare.core.modelfolder import write_manifest


@pytest.fixture
def model_copy(tiny_model, tmp_path):
    return shutil.copytree(tiny_model, tmp_path / "model")


@pytest.fixture
def good_image(tmp_path):
    path = tmp_path / "input.nii.gz"
    sitk.WriteImage(sitk.GetImageFromArray(np.random.default_rng(0).random((4, 16, 16)).astype(np.float32)), str(path))
    return path


def _write(path, array, vector=False):
    sitk.WriteImage(sitk.GetImageFromArray(array, isVector=vector), str(path))
    return path


def _task(tmp_path, name="t", damage=None):
    root = write_task_folder(tmp_path / name, {"a": 1}, [blobs((2, 8, 8), {1: np.s_[:, 0:3, 0:3]})] * 2, ending=".mha")
    image, label = root / "imagesTr" / "case_000_0000.mha", root / "labelsTr" / "case_000.mha"
    if damage == "shape":
        _write(image, np.zeros((2, 8, 9), np.float32))
    elif damage == "geometry":
        moved = sitk.ReadImage(str(image))
        moved.SetOrigin((5.0, 0.0, 0.0))
        sitk.WriteImage(moved, str(image))
    elif damage == "label_value":
        _write(label, blobs((2, 8, 8), {9: np.s_[:, 0:3, 0:3]}))
    elif damage == "nan":
        _write(image, np.full((2, 8, 8), np.nan, np.float32))
    elif damage == "empty_labels":
        for case in ("case_000", "case_001"):
            _write(root / "labelsTr" / f"{case}.mha", np.zeros((2, 8, 8), np.uint8))
    elif damage == "missing_image":
        image.unlink()
    elif damage == "empty_file":
        label.write_bytes(b"")
    return root


def _segment(model, image, output, task="phantom3d", *options):
    images = [str(i) for i in image] if isinstance(image, list) else [str(image)]
    return ["segment", "--model", str(model), "--task", task, *images, "-o", str(output), "--device", "cpu", *options]


CASE_NAMES = [
    "input missing", "unknown task", "model folder missing", "weights missing", "weights tampered",
    "weights truncated", "weights do not match config", "config tampered", "manifest missing", "labelspace corrupt",
    "NaN input", "vector input", "4D input", "output exists", "output format", "segment: batch size 0",
    "segment: 3D volume to PNG", "segment: glob matches nothing", "segment: folder without images",
    "segment: several DICOM series", "segment: one file of a DICOM series", "segment: DICOM SEG of a non-DICOM input",
    "segment: two images, one output name", "segment: several images into a file",
    "segment: output is the input", "task: shape", "task: geometry",
    "task: label_value", "task: nan", "task: empty_labels", "task: missing_image", "task: empty_file",
    "rank: unreadable file", "rank: unknown task", "rank: empty folder", "rank: mirroring a lateralised task",
    "rank: output not CSV", "rank: output exists", "task folder missing", "bad group", "labelspace file invalid",
    "train: task not in label space", "train: existing output", "labelspace: bad fixed size",
    "labelspace: bad patch budget", "evaluate: labels differ",
    # issue 31
    "segment: --tta on a lateralised task", "evaluate: --tta on a lateralised task", "segment: --series, not DICOM",
    "rank: --series, not DICOM", "train: --out inside a model", "postprocess: --out inside the model",
    "add-task: --out inside a model", "segment: DICOM SEG of a series without a frame of reference",
    "segment: a damaged file in a DICOM series", "segment: unknown model name",
]


def _rank(model, image, output, task="phantom3d", *options):
    return ["rank", "--model", str(model), "--task", task, str(image), "-o", str(output), "--device", "cpu", *options]


def case_table(tmp_path, model, image):
    """{name: (argv, text the message must contain, preparation)} for every bad input."""
    out = tmp_path / "out.nii.gz"
    weights = model / "model.safetensors"
    cases = {}

    def add(name, argv, expected, prepare=None):
        cases[name] = (argv, expected, prepare)

    add("input missing", _segment(model, tmp_path / "nope.nii.gz", out), "nope.nii.gz: input not found")
    add("unknown task", _segment(model, image, out, task="liver"), "unknown task 'liver'; known tasks: phantom3d")
    add("model folder missing", _segment(tmp_path / "no-model", image, out), "no-model: model folder does not exist")
    add("weights missing", _segment(model, image, out), "missing model.safetensors", lambda: weights.unlink())
    add("weights tampered", _segment(model, image, out), "model.safetensors: contents do not match manifest.json",
        lambda: weights.write_bytes(weights.read_bytes()[:-8] + b"12345678"))

    def truncate_and_rehash():
        weights.write_bytes(weights.read_bytes()[:1000])
        write_manifest(model)
    add("weights truncated", _segment(model, image, out), "truncated or corrupt", truncate_and_rehash)

    def mismatched_config():
        config = json.loads((model / "config.json").read_text())
        config["network"]["filters"] = [8, 16, 32, 64, 128]
        (model / "config.json").write_text(json.dumps(config))
        write_manifest(model)
    add("weights do not match config", _segment(model, image, out), "weights do not match config.json",
        mismatched_config)
    add("config tampered", _segment(model, image, out), "config.json: contents do not match manifest.json",
        lambda: (model / "config.json").write_text("{}"))
    add("manifest missing", _segment(model, image, out), "missing manifest.json",
        lambda: (model / "manifest.json").unlink())

    def corrupt_labelspace():
        (model / "labelspace.json").write_text("{not json")
        write_manifest(model)
    add("labelspace corrupt", _segment(model, image, out), "labelspace.json: label space is not valid JSON",
        corrupt_labelspace)
    nan_image = _write(tmp_path / "nan.mha", np.full((3, 8, 8), np.nan, np.float32))
    add("NaN input", _segment(model, nan_image, out), "nan.mha: image contains NaN")
    vector = _write(tmp_path / "vector.mha", np.zeros((3, 8, 8, 2), np.float32), vector=True)
    add("vector input", _segment(model, vector, out), "vector.mha: input image has 2 components per pixel")
    four_d = tmp_path / "four_d.nii.gz"
    sitk.WriteImage(sitk.Image([4, 4, 4, 2], sitk.sitkFloat32), str(four_d))
    add("4D input", _segment(model, four_d, out), "four_d.nii.gz: input image has 4 dimensions")
    add("output exists", _segment(model, image, tmp_path / "old.nii.gz"),
        "old.nii.gz: already exists (pass --overwrite", lambda: (tmp_path / "old.nii.gz").write_bytes(b"earlier"))
    add("segment: output is the input", _segment(model, image, image, "phantom3d", "--overwrite"),
        "input.nii.gz: is the input image; choose another output")
    add("output format", _segment(model, image, tmp_path / "out.txt"), "out.txt: output must end in")
    add("segment: batch size 0", _segment(model, image, out, "phantom3d", "--batch-size", "0"),
        "--batch-size must be a whole number of at least 1, not 0")
    add("segment: 3D volume to PNG", _segment(model, image, tmp_path / "out.png"),
        "out.png: a PNG file holds one 2D slice, not a volume of 4 slices (16x16x4); write .nii.gz")
    add("segment: glob matches nothing", _segment(model, f"{tmp_path}/absent*.nii.gz", tmp_path / "labels"),
        "absent*.nii.gz: no file or folder matches")
    (tmp_path / "empty").mkdir()
    add("segment: folder without images", _segment(model, tmp_path / "empty", tmp_path / "labels"),
        "empty: no images in it")
    volume = mr_volume(sitk.ReadImage(str(image)))
    first_uid, files = write_series(volume, tmp_path / "dicom", series_number=1)
    second_uid, _ = write_series(volume, tmp_path / "dicom", series_number=2)
    listed = "; ".join(f"{uid} (T1, 4 files)" for uid in sorted((first_uid, second_uid)))
    add("segment: several DICOM series", _segment(model, tmp_path / "dicom", out),
        f"dicom: holds 2 DICOM series; choose one with --series UID: {listed}")
    add("segment: one file of a DICOM series", _segment(model, files[1], out),
        f"{files[1].name}: is one of 4 files of DICOM series {first_uid}; pass the folder {tmp_path / 'dicom'}")
    add("segment: DICOM SEG of a non-DICOM input", _segment(model, image, tmp_path / "seg.dcm"),
        "input.nii.gz: is not DICOM, and DICOM SEG references the DICOM images it segments")
    twin = tmp_path / "other" / image.name
    twin.parent.mkdir()
    twin.write_bytes(image.read_bytes())
    add("segment: two images, one output name", _segment(model, [image, twin], tmp_path / "labels"),
        "input.nii.gz: would be written for two images")
    add("segment: several images into a file", _segment(model, [image, twin], image), "input.nii.gz: is a file")
    broken = tmp_path / "broken.nii.gz"
    broken.write_bytes(b"not an image")
    ranking = tmp_path / "ranking.csv"
    add("rank: unreadable file", _rank(model, broken, ranking), "broken.nii.gz: input image is damaged")
    add("rank: unknown task", _rank(model, image, ranking, "liver"), "unknown task 'liver'; known tasks: phantom3d")
    add("rank: empty folder", _rank(model, tmp_path / "empty", ranking), "empty: no images in it")
    lateralised = "task 'sides3d' is lateralised (its labels tell left from right), so mirroring is not a valid " \
                  "augmentation for it: "
    add("rank: mirroring a lateralised task", _rank(model, image, ranking, "sides3d", "--score", "tta"),
        lateralised + "--score tta (use --score entropy or auto) cannot be used for it")
    add("segment: --tta on a lateralised task", _segment(model, image, out, "sides3d", "--tta"),
        lateralised + "--tta cannot be used for it")
    add("segment: --series, not DICOM", _segment(model, image, out, "phantom3d", "--series", "1.2.3"),
        "input.nii.gz: is not DICOM, and --series 1.2.3 picks a series of a DICOM folder")
    add("rank: --series, not DICOM", _rank(model, image, ranking, "phantom3d", "--series", "1.2.3"),
        "input.nii.gz: is not DICOM, and --series 1.2.3 picks a series of a DICOM folder")
    add("segment: unknown model name", _segment("no-such-model-v9", image, out),
        "no-such-model-v9: model folder does not exist, and no model has this name (labelshare models lists them)")
    remove_attribute(write_series(volume, tmp_path / "no_frame")[1], "FrameOfReferenceUID")
    add("segment: DICOM SEG of a series without a frame of reference",
        _segment(model, tmp_path / "no_frame", tmp_path / "seg.dcm"),
        "lacks FrameOfReferenceUID (0020,0052), which a DICOM SEG of no_frame must reference; write .nii.gz or "
        ".seg.nrrd instead")
    damaged = write_series(volume, tmp_path / "damaged")[1][2]
    damaged.write_bytes(damaged.read_bytes()[:400])
    add("segment: a damaged file in a DICOM series", _segment(model, tmp_path / "damaged", out),
        f"{damaged}: DICOM file is damaged (GDCM cannot read it), so the series in {tmp_path / 'damaged'} would lack "
        "its slice")
    add("rank: output not CSV", _rank(model, image, tmp_path / "ranking.txt"), "ranking.txt: the ranking table is CSV")
    add("rank: output exists", _rank(model, image, tmp_path / "old.csv"), "old.csv: already exists (pass --overwrite",
        lambda: (tmp_path / "old.csv").write_text("earlier"))
    space = tmp_path / "ls.json"
    for damage, expected in [("shape", "case_000_0000.mha: case 'case_000' of task 'bad_shape': image size (9, 8, 2) "
                                       "differs from label size (8, 8, 2)"),
                             ("geometry", "image and label origin differ"),
                             ("label_value", "label values [9] are not labels of dataset.json"),
                             ("nan", "image contains NaN"),
                             ("empty_labels", "no case contains any foreground label"),
                             ("missing_image", "case 'case_000' has no label file"),
                             ("empty_file", "case_000.mha: case 'case_000' of task 'bad_")]:
        folder = _task(tmp_path, f"bad_{damage}", damage) if damage != "missing_image" else None
        if damage == "missing_image":
            folder = _task(tmp_path, "bad_missing_image")
            (folder / "labelsTr" / "case_000.mha").unlink()
        add(f"task: {damage}", ["labelspace", "build", "--task", f"{folder.name}={folder}", "-o", str(space)],
            expected)
    good = _task(tmp_path, "good")
    add("task folder missing", ["labelspace", "build", "--task", f"x={tmp_path / 'absent'}", "-o", str(space)],
        "absent: task folder of 'x' does not exist")
    add("bad group", ["labelspace", "build", "--task", f"good={good}", "--group", "good:a=good:b", "-o", str(space)],
        "task 'good' has no label 'b'")
    add("labelspace file invalid", ["labelspace", "show", str(image)], "input.nii.gz: label space is not valid JSON")
    add("train: task not in label space", ["train", "--labelspace", str(model / "labelspace.json"), "--task",
                                           f"good={good}", "--out", str(tmp_path / "m")], "unknown task 'good'")
    add("train: existing output", ["train", "--labelspace", str(model / "labelspace.json"), "--task",
                                   f"good={good}", "--out", str(model)], "already exists")
    add("labelspace: bad fixed size", ["labelspace", "build", "--task", f"good={good}", "--fixed-size", "50", "-o",
                                       str(tmp_path / "ls2.json")], "multiple of 16")
    add("labelspace: bad patch budget", ["labelspace", "build", "--task", f"good={good}", "--patch-pixels", "0",
                                         "-o", str(tmp_path / "ls3.json")], "--patch-pixels 0")
    add("evaluate: labels differ", ["evaluate", "--model", str(model), "--task", "phantom3d", "--data", str(good),
                                    "-o", str(tmp_path / "ev")], "differ from the labels of task 'phantom3d'")
    add("evaluate: --tta on a lateralised task", ["evaluate", "--model", str(model), "--task", "sides3d", "--data",
                                                  str(good), "--tta", "-o", str(tmp_path / "ev")],
        lateralised + "--tta cannot be used for it")
    inside = f"is inside the model folder {model}; a new version goes beside the others, not inside one"
    add("train: --out inside a model", ["train", "--labelspace", str(model / "labelspace.json"), "--task",
                                        f"good={good}", "--out", str(model / "v2")], inside)
    add("postprocess: --out inside the model", ["postprocess", "--model", str(model), "--task", f"good={good}",
                                                "--out", str(model / "sub" / "v2")], inside)
    add("add-task: --out inside a model", ["add-task", "--model", str(model), "--task", f"good={good}", "--out",
                                           str(model / "v2")], inside)
    return cases


def test_every_bad_input_has_a_case(tmp_path, model_copy, good_image):
    assert sorted(case_table(tmp_path, model_copy, good_image)) == sorted(CASE_NAMES)
    assert len(CASE_NAMES) >= 15


@pytest.mark.parametrize("name", CASE_NAMES)
def test_bad_input_gives_one_line_error(tmp_path, model_copy, good_image, capsys, name):
    argv, expected, prepare = case_table(tmp_path, model_copy, good_image)[name]
    if prepare:
        prepare()
    capsys.readouterr()
    status = main(argv)
    captured = capsys.readouterr()
    errors = [line for line in captured.err.splitlines() if "error" in line.lower()]
    assert status == 1
    assert len(errors) == 1 and errors[0] == captured.err.strip().splitlines()[-1], captured.err
    assert errors[0].startswith("labelshare: error: ")
    assert expected in errors[0]
    assert "Traceback" not in captured.err + captured.out


def test_a_real_process_prints_no_traceback(tmp_path, model_copy, good_image):
    (model_copy / "model.safetensors").write_bytes(b"\x00" * 10)
    result = subprocess.run([sys.executable, "-m", "labelshare", *_segment(model_copy, good_image, tmp_path / "o.nii")],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    last_line = result.stderr.strip().splitlines()[-1]
    assert last_line.startswith("labelshare: error: ") and "model.safetensors" in last_line
