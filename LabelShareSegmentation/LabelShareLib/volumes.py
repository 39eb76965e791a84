"""Volume node ⇄ SimpleITK image, with the full geometry.

Slicer keeps volumes in RAS (right, anterior, superior) with an IJK-to-RAS matrix; files and SimpleITK use LPS
(left, posterior, superior). The two differ by the sign of the first two world axes, so origin and direction
columns flip there; spacing and voxel order do not change. ``slicer.util.arrayFromVolume`` and SimpleITK's arrays
are both indexed (K, J, I). A 2D image (a projection such as an X-ray or a PNG) is a single-slice volume in
Slicer and a single-slice 3D image here, which the engine segments as one projection.

A colour (RGB or RGBA) volume, e.g. a radiograph read from a PNG or JPEG, is segmented as its luminance, the grey
image Slicer's "Vector to Scalar Volume" module makes of it (:func:`segmentation_input`).

Usage::

    image = volume_to_image(volumeNode)                # SimpleITK image in LPS, same voxels
    node = image_to_volume(image, scene, "copy")      # a new vtkMRMLScalarVolumeNode in RAS
    image, notes = segmentation_input(volumeNode)      # scalar as is, colour as its luminance (notes say so)
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk
import slicer
import vtk
from vtk.util import numpy_support
from labelshare.core.errors import DataError

RAS_FROM_LPS = np.diag([-1.0, -1.0, 1.0])  # its own inverse


def check_scalar_volume(volume_node) -> None:
    """Raise :class:`DataError` unless the node is a non-empty scalar (grey-value, one component) volume."""
    if volume_node is None:
        raise DataError("no input volume selected")
    name = volume_node.GetName()
    if not volume_node.IsA("vtkMRMLScalarVolumeNode") or volume_node.IsA("vtkMRMLLabelMapVolumeNode"):
        raise DataError(f"volume '{name}' is a {volume_node.GetClassName()}; a scalar (grey-value) volume is needed "
                        "(convert colour images with the Vector to Scalar Volume module)")
    image_data = volume_node.GetImageData()
    if image_data is None or 0 in image_data.GetDimensions() or image_data.GetPointData().GetScalars() is None:
        raise DataError(f"volume '{name}' is empty (it has no voxels)")
    components = image_data.GetNumberOfScalarComponents()
    if components != 1:
        raise DataError(f"volume '{name}' has {components} values per voxel (a colour, vector or 4D multi-volume "
                        "image); choose a scalar volume, e.g. one frame or one channel")


def is_colour_volume(volume_node) -> bool:
    """A vector volume with 3 (RGB) or 4 (RGBA) values per voxel: a colour image."""
    image_data = volume_node.GetImageData() if volume_node is not None else None
    return bool(volume_node is not None and volume_node.IsA("vtkMRMLVectorVolumeNode") and image_data is not None
                and image_data.GetNumberOfScalarComponents() in (3, 4))


def colour_note(volume_node) -> str:
    """What the user reads when a colour volume is segmented ('' for any other volume)."""
    if not is_colour_volume(volume_node):
        return ""
    return (f"'{volume_node.GetName()}' is a colour (RGB) volume: it is segmented as its luminance "
            "(0.30 R + 0.59 G + 0.11 B, the grey image of Slicer's Vector to Scalar Volume module)")


def check_input_volume(volume_node) -> None:
    """Raise :class:`DataError` unless the node can be segmented: a scalar volume (:func:`check_scalar_volume`) or
    a colour volume (segmented as its luminance, :func:`segmentation_input`)."""
    if not is_colour_volume(volume_node):
        check_scalar_volume(volume_node)
    elif 0 in volume_node.GetImageData().GetDimensions():
        raise DataError(f"volume '{volume_node.GetName()}' is empty (it has no voxels)")


def segmentation_input(volume_node) -> tuple[sitk.Image, list[str]]:
    """The image the network segments (SimpleITK, LPS) and the notes the user should read: a scalar volume as it
    is; a colour volume as its luminance (VTK's ``vtkImageLuminance`` on the red, green and blue components, as
    Slicer's Vector to Scalar Volume module does), on the volume's grid. Raises :class:`DataError` for other
    volumes (:func:`check_input_volume`)."""
    check_input_volume(volume_node)
    if not is_colour_volume(volume_node):
        return volume_to_image(volume_node), []
    rgb = vtk.vtkImageExtractComponents()
    rgb.SetInputData(volume_node.GetImageData())
    rgb.SetComponents(0, 1, 2)  # RGBA: the alpha channel is not part of the picture
    luminance = vtk.vtkImageLuminance()
    luminance.SetInputConnection(rgb.GetOutputPort())
    luminance.Update()
    grey = luminance.GetOutput()
    voxels = numpy_support.vtk_to_numpy(grey.GetPointData().GetScalars()).reshape(grey.GetDimensions()[::-1])
    return _image_with_geometry(voxels.copy(), volume_node), [colour_note(volume_node)]


def ras_matrix_to_lps(ijk_to_ras: np.ndarray) -> tuple[tuple, tuple, tuple]:
    """(spacing, origin, direction) in SimpleITK's LPS convention from a 4x4 IJK-to-RAS matrix."""
    axes = ijk_to_ras[:3, :3]
    spacing = np.linalg.norm(axes, axis=0)
    direction = RAS_FROM_LPS @ (axes / spacing)
    origin = RAS_FROM_LPS @ ijk_to_ras[:3, 3]
    return tuple(spacing.tolist()), tuple(origin.tolist()), tuple(direction.ravel().tolist())


def lps_to_ras_matrix(image: sitk.Image) -> np.ndarray:
    """The 4x4 IJK-to-RAS matrix of a 3D SimpleITK image."""
    direction = np.asarray(image.GetDirection(), dtype=float).reshape(3, 3)
    matrix = np.eye(4)
    matrix[:3, :3] = RAS_FROM_LPS @ direction @ np.diag(image.GetSpacing())
    matrix[:3, 3] = RAS_FROM_LPS @ np.asarray(image.GetOrigin(), dtype=float)
    return matrix


def ijk_to_ras(volume_node) -> np.ndarray:
    matrix = vtk.vtkMatrix4x4()
    volume_node.GetIJKToRASMatrix(matrix)
    return slicer.util.arrayFromVTKMatrix(matrix)


def volume_to_image(volume_node) -> sitk.Image:
    """A 3D SimpleITK image (LPS) with the voxels, spacing, origin and direction of a scalar volume node.

    The node's parent transform is not applied: the image is in the volume's own coordinates, and results
    imported back (:mod:`.segments`) are placed under the same transform. Raises :class:`DataError` for vector,
    multi-component (4D), label-map or empty volumes.
    """
    check_scalar_volume(volume_node)
    return _image_with_geometry(slicer.util.arrayFromVolume(volume_node), volume_node)


def _image_with_geometry(voxels: np.ndarray, volume_node) -> sitk.Image:
    """A SimpleITK image of (K, J, I) voxels (copied) with the volume node's geometry in LPS."""
    image = sitk.GetImageFromArray(voxels)
    spacing, origin, direction = ras_matrix_to_lps(ijk_to_ras(volume_node))
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    image.SetDirection(direction)
    return image


def as_3d(image: sitk.Image) -> sitk.Image:
    """A 2D image as a single-slice 3D image (unit spacing and zero origin along the new axis)."""
    if image.GetDimension() == 3:
        return image
    if image.GetDimension() != 2:
        raise DataError(f"image has {image.GetDimension()} dimensions; 2D or 3D is needed")
    return sitk.JoinSeries(image)


def set_volume_from_image(volume_node, image: sitk.Image) -> None:
    """Replace the voxels and geometry of an existing volume node with those of a SimpleITK image (LPS)."""
    image = as_3d(image)
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise DataError(f"image has {image.GetNumberOfComponentsPerPixel()} components per pixel; scalar needed")
    volume_node.SetIJKToRASMatrix(slicer.util.vtkMatrixFromArray(lps_to_ras_matrix(image)))
    slicer.util.updateVolumeFromArray(volume_node, sitk.GetArrayViewFromImage(image))


def image_to_oriented_image(image: sitk.Image):
    """A ``vtkOrientedImageData`` (Slicer's image with its IJK-to-RAS geometry, as segmentations store labelmaps)
    holding the voxels and geometry of a scalar SimpleITK image (LPS)."""
    image = as_3d(image)
    oriented = slicer.vtkOrientedImageData()
    oriented.SetDimensions(image.GetSize())
    voxels = sitk.GetArrayViewFromImage(image)  # (K, J, I) in C order is VTK's point order, I fastest
    oriented.GetPointData().SetScalars(numpy_support.numpy_to_vtk(voxels.ravel(), deep=True))
    oriented.SetImageToWorldMatrix(slicer.util.vtkMatrixFromArray(lps_to_ras_matrix(image)))
    return oriented


def image_to_volume(image: sitk.Image, scene, name: str, labelmap: bool = False):
    """A new scalar (or label-map) volume node in ``scene`` holding a SimpleITK image, geometry converted to RAS."""
    class_name = "vtkMRMLLabelMapVolumeNode" if labelmap else "vtkMRMLScalarVolumeNode"
    node = scene.AddNewNodeByClass(class_name, name)
    set_volume_from_image(node, image)
    node.CreateDefaultDisplayNodes()
    return node


# The uncertainty map (values 0-1) over the image: Slicer's Iron colours (black, red, yellow, white; in Slicer and
# slicer-core alike), voxels below UNCERTAINTY_SHOWN_FROM transparent so that the image shows where the model is sure
UNCERTAINTY_COLOURS = "vtkMRMLColorTableNodeIron"
UNCERTAINTY_SHOWN_FROM = 0.1
UNCERTAINTY_OPACITY = 0.6


def show_uncertainty(image: sitk.Image, volume_node, name: str, node=None):
    """The uncertainty map ``image`` as a colour overlay over ``volume_node``: into ``node`` (a scalar volume node,
    replaced), or a new node ``name`` beside the volume; coloured 0-1 by :data:`UNCERTAINTY_COLOURS` and shown as
    the foreground of every slice view, the volume as their background. Returns the node."""
    scene = volume_node.GetScene()
    if node is None or node.GetScene() is None:
        node = image_to_volume(image, scene, name)
    else:
        set_volume_from_image(node, image)
    node.SetAndObserveTransformNodeID(volume_node.GetTransformNodeID())  # placed as the segments are
    display = node.GetDisplayNode()
    display.SetAndObserveColorNodeID(UNCERTAINTY_COLOURS)
    display.AutoWindowLevelOff()
    display.SetWindowLevelMinMax(0.0, 1.0)
    display.ApplyThresholdOn()
    display.SetThreshold(UNCERTAINTY_SHOWN_FROM, 1.0)
    composites = scene.GetNodesByClass("vtkMRMLSliceCompositeNode")  # one per slice view
    for index in range(composites.GetNumberOfItems()):
        composite = composites.GetItemAsObject(index)
        composite.SetBackgroundVolumeID(volume_node.GetID())
        composite.SetForegroundVolumeID(node.GetID())
        composite.SetForegroundOpacity(UNCERTAINTY_OPACITY)
    return node
