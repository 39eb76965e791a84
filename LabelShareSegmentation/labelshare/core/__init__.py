"""LabelShare's light layer: configurations, contracts and file formats, torch-free.

Everything here imports the standard library, numpy, SimpleITK and (where DICOM is read) pydicom, and nothing of
:mod:`labelshare.engine`: no torch, MONAI, SciPy, safetensors, highdicom or slicerio. Slicer's own process imports
only this package (model lists and cards, task folders and collected cases, run states, worker requests, ranking
tables), and the command line checks every argument, input, output and task with it before it imports the engine.
Testing/test_layers.py holds this line for every module of the folder.
"""

__version__ = "0.1.0"
