"""Render the extension's catalog pictures: Slicer slice views of real images with the segments LabelShare makes.

For each picture: the bundled model segments a case of ``../shared/data`` with ``labelshare segment`` (a
validation case of the model: it was not trained on it); the image becomes a volume node (read with SimpleITK:
slicer-core's ITK has no PNG reader, which Slicer itself has); ``LabelShareLib`` imports the result as the
Segmentation module does (named, coloured segments beside the volume); and a Slicer slice view renders the slice
through the middle
of the segments offscreen: ``vtkMRMLSliceLogic`` reslices and blends the volume, Slicer's segmentations
displayable manager draws the segments (filled at half opacity, outlined), and an EGL render window (Mesa,
no display) renders both. Slicer's desktop cannot run here, so these are rendered slice views, not screenshots of
the module (Resources/Screenshots/README.md says so).

Run from the repository root (about a minute on a CPU)::

    .venv/bin/python Resources/Screenshots/render_slice_views.py [--data ../shared/data] [--out Resources/Screenshots]
"""

from __future__ import annotations

import os

os.environ.setdefault("VTK_DEFAULT_OPENGL_WINDOW", "vtkEGLRenderWindow")  # offscreen, no X server needed

import argparse  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import SimpleITK as sitk  # noqa: E402
import slicer  # noqa: E402
import vtk  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(REPO / "Testing"), str(REPO / "LabelShareSegmentation")]
from LabelShareLib.segments import import_task_segments, new_output_segmentation  # noqa: E402
from LabelShareLib.store import ModelStore  # noqa: E402
from LabelShareLib.volumes import image_to_volume  # noqa: E402
from slicer_support import slicer_scene  # noqa: E402

from labelshare.core.paths import default_model_dir  # noqa: E402


@dataclass(frozen=True)
class Picture:
    file: str
    task: str  # task of the bundled model
    data_folder: str  # task folder in the shared data
    case: str
    orientation: str  # Slicer's slice orientation: Axial, Coronal or Sagittal
    size: tuple[int, int]  # pixels (width, height)


PICTURES = (
    Picture("hippocampus-axial.png", "hippocampus", "msd_hippocampus", "hippocampus_084", "Axial", (480, 480)),
    Picture("hippocampus-coronal.png", "hippocampus", "msd_hippocampus", "hippocampus_084", "Coronal", (480, 480)),
    Picture("mammogram.png", "mammo", "ddsm_mammo_tissue", "ddsm_A_0010_1_RIGHT_MLO", "Axial", (360, 640)),
)


def segment_with_the_bundled_model(image: Path, task: str, out: Path) -> Path:
    """The label image ``labelshare segment`` writes for ``image`` (on the CPU)."""
    subprocess.run([sys.executable, "-m", "labelshare", "segment", "--model", str(default_model_dir()), "--task",
                    task, str(image), "-o", str(out), "--device", "cpu"], check=True, capture_output=True, text=True)
    return out


def centre_of_labels_ras(label_image: sitk.Image) -> tuple[float, float, float]:
    """World (RAS) position of the centre of the labelled voxels."""
    index = np.argwhere(sitk.GetArrayViewFromImage(label_image) > 0).mean(axis=0)[::-1]  # (K, J, I) → (I, J, K)
    if label_image.GetDimension() == 2:
        index = index[:2]
    lps = label_image.TransformContinuousIndexToPhysicalPoint([float(i) for i in index])
    return (-lps[0], -lps[1], lps[2] if len(lps) == 3 else 0.0)


def render_slice_view(env, volume, orientation: str, centre_ras, size: tuple[int, int], path: Path) -> None:
    """One slice view of ``volume`` and the segmentations in the scene, through ``centre_ras``, as a PNG."""
    renderer = vtk.vtkRenderer()
    window = vtk.vtkRenderWindow()
    window.SetOffScreenRendering(1)
    window.SetSize(*size)
    window.AddRenderer(renderer)
    interactor = vtk.vtkGenericRenderWindowInteractor()  # displayable managers expect one
    interactor.SetRenderWindow(window)
    interactor.Initialize()

    application = env.application_logic
    if application.GetSliceLogics() is None:
        application.SetSliceLogics(vtk.vtkCollection())
    logic = slicer.vtkMRMLSliceLogic()
    logic.SetMRMLApplicationLogic(application)
    logic.SetMRMLScene(env.scene)
    application.GetSliceLogics().AddItem(logic)
    slice_node = logic.AddSliceNode(orientation)
    slice_node.SetOrientation(orientation)

    # The resliced, blended volume layers: the background of the view, drawn before the segments (Slicer's slice
    # widget does this with CTK's light-box renderer manager, which slicer-core does not have).
    image_mapper = vtk.vtkImageMapper()
    image_mapper.SetColorWindow(255)  # the slice logic's output is already RGBA in 0..255
    image_mapper.SetColorLevel(127.5)
    image_actor = vtk.vtkActor2D()
    image_actor.SetMapper(image_mapper)
    image_actor.GetProperty().SetDisplayLocationToBackground()
    renderer.AddViewProp(image_actor)

    factory = slicer.vtkMRMLSliceViewDisplayableManagerFactory.GetInstance()
    factory.SetMRMLApplicationLogic(application)
    if not factory.IsDisplayableManagerRegistered("vtkMRMLSegmentationsDisplayableManager2D"):
        factory.RegisterDisplayableManager("vtkMRMLSegmentationsDisplayableManager2D")
    managers = slicer.vtkMRMLDisplayableManagerGroup()
    managers.Initialize(factory, renderer)
    managers.SetMRMLDisplayableNode(slice_node)

    logic.GetSliceCompositeNode().SetBackgroundVolumeID(volume.GetID())
    logic.ResizeSliceNode(*size)
    logic.FitSliceToBackground()
    slice_node.JumpSliceByOffsetting(*centre_ras)
    image_mapper.SetInputConnection(logic.GetImageDataConnection())
    window.Render()
    if window.GetClassName() != "vtkEGLRenderWindow":
        print(f"note: rendered with {window.GetClassName()}, not EGL", file=sys.stderr)

    capture = vtk.vtkWindowToImageFilter()
    capture.SetInput(window)
    writer = vtk.vtkPNGWriter()
    writer.SetCompressionLevel(9)
    writer.SetFileName(str(path))
    writer.SetInputConnection(capture.GetOutputPort())
    writer.Write()
    window.Finalize()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data", help="the shared data folder")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent, help="folder for the PNGs")
    parser.add_argument("--only", nargs="*", help="file names of the pictures to render (default: all)")
    arguments = parser.parse_args(argv)
    labels = ModelStore()
    arguments.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="labelshare-screenshots-") as folder:
        segmented: dict[Path, Path] = {}
        for picture in PICTURES:
            if arguments.only and picture.file not in arguments.only:
                continue
            image = next((arguments.data / picture.data_folder / "imagesTr").glob(f"{picture.case}.*"))
            if image not in segmented:
                segmented[image] = segment_with_the_bundled_model(image, picture.task,
                                                                  Path(folder) / f"{picture.case}.nii.gz")
            label_image = sitk.ReadImage(str(segmented[image]))
            with slicer_scene() as env:
                volume = image_to_volume(sitk.ReadImage(str(image)), env.scene, picture.case)
                node = new_output_segmentation(volume, picture.task)
                import_task_segments(node, label_image, picture.task,
                                     labels.task_labels(default_model_dir(), picture.task), reference_volume=volume,
                                     model_name=default_model_dir().name)
                render_slice_view(env, volume, picture.orientation, centre_of_labels_ras(label_image), picture.size,
                                  arguments.out / picture.file)
            print(f"{arguments.out / picture.file}: {picture.orientation} slice view of {picture.case}, task "
                  f"{picture.task} ({(arguments.out / picture.file).stat().st_size // 1024} KB)")


if __name__ == "__main__":
    main()
