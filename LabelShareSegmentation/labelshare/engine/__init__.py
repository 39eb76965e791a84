"""LabelShare's heavy layer: the torch engine (networks, loaded models, training, inference, evaluation, add-task,
the worker's server) and the computations that read a task's data (label statistics).

It imports :mod:`labelshare.core` and torch, MONAI, SciPy and safetensors at module level; it runs in the command
line's commands, the segmentation worker and training children, never in Slicer's own process.
"""
