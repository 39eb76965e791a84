"""Static checks of a scripted module's Qt shell, shared by both modules' tests: the shell needs PythonQt/CTK, which
only a real Slicer has, so here its .ui is loaded with PySide6 (structure only) and its source is read as a tree."""

from __future__ import annotations

import ast
import os
import re
from pathlib import Path

# The only loader complaints allowed: Slicer-only classes, their properties and signals, which PySide6 cannot know.
SLICER_ONLY = re.compile(r"ctk|qMRML|mrmlScene|vtkMRML|QObject::connect|sender name|receiver name|property filters")


def load_ui_widgets(ui_file: Path) -> dict[str, object]:
    """Object name → widget of the .ui, loaded by Qt's own loader (CTK/qMRML classes fall back to QWidget)."""
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    from PySide6.QtCore import QFile, QtMsgType, qInstallMessageHandler
    from PySide6.QtUiTools import QUiLoader
    from PySide6.QtWidgets import QApplication, QWidget
    app = QApplication.instance() or QApplication([])
    messages = []
    previous = qInstallMessageHandler(lambda kind, context, text: messages.append((kind, text)))
    try:
        file = QFile(str(ui_file))
        assert file.open(QFile.ReadOnly), ui_file
        root = QUiLoader().load(file)
    finally:
        qInstallMessageHandler(previous)
    assert root is not None and app is not None
    unexpected = [text for kind, text in messages if kind != QtMsgType.QtDebugMsg and not SLICER_ONLY.search(text)]
    assert not unexpected, unexpected
    widgets = {w.objectName(): w for w in root.findChildren(QWidget) if w.objectName()}
    widgets[root.objectName()] = root
    return widgets


def source_tree(module_file: Path) -> ast.Module:
    return ast.parse(module_file.read_text(encoding="utf-8"))


def ui_attribute(node: ast.AST) -> str | None:
    """``X`` of an expression ``self.ui.X``."""
    if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Attribute) and node.value.attr == "ui":
        return node.attr
    return None


def ui_names_used(module_file: Path) -> set[str]:
    return {name for node in ast.walk(source_tree(module_file)) if (name := ui_attribute(node))}


def parameter_fields(module_file: Path) -> dict[str, str]:
    """Fields of the module's @parameterNodeWrapper class: name → annotation source."""
    for node in ast.walk(source_tree(module_file)):
        if isinstance(node, ast.ClassDef) and any(getattr(d, "id", "") == "parameterNodeWrapper"
                                                  for d in node.decorator_list):
            return {item.target.id: ast.unparse(item.annotation) for item in node.body
                    if isinstance(item, ast.AnnAssign)}
    raise AssertionError(f"no @parameterNodeWrapper class in {module_file.name}")
