"""First-run dependencies inside Slicer: torch through the PyTorch extension, the rest with pip, after one
confirmation; Slicer's own numpy, SimpleITK and requests (and an installed torch) are never replaced.

Users of Slicer AI extensions report broken installs more than anything else: pip replacing Slicer's SimpleITK
or numpy, CUDA-less or too-new torch builds, proxies (lassoan/SlicerTotalSegmentator #4, #55, #72; Slicer/Slicer
#6711, #7661). So: one question listing everything that will be installed; then torch only through
``PyTorchUtils`` (it chooses the build for the GPU driver) and every other package through
``slicer.packaging.pip_ensure`` (Slicer ≥ 5.12) or ``slicer.util.pip_install``, neither of which asks again,
always with a constraints file that pins the protected packages to their installed versions, so pip fails with a
message instead of replacing them. Nothing is installed while Slicer runs in testing mode (its test machines):
there confirmations accept by themselves, and a self-test must not download gigabytes.

The Slicer calls are passed in (:class:`DependencyInstaller`), so the decisions here are tested without Slicer;
:func:`ensure_dependencies` gives it the running Slicer's (both modules call it: Apply, Rank, Train, the console
API and the Install buttons).
"""

from __future__ import annotations

import importlib.metadata
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from labelshare.core.errors import LabelShareError

from .application import slicer_application, temporary_root
from .segments import EXTENSION_RESOURCES

REQUIREMENTS_FILE = EXTENSION_RESOURCES / "requirements.txt"
TORCH_REQUIREMENT = "torch>=2.4.1"  # as pyproject.toml: MONAI >= 1.5 needs it; MONAI 1.4 needs numpy < 2
PROTECTED_PACKAGES = ("numpy", "SimpleITK", "requests", "torch")
REQUESTER = "LabelShare"


class DependencyError(LabelShareError):
    """Dependencies are missing and could not be installed (declined, no network, conflict)."""


def read_requirements(path: str | Path = REQUIREMENTS_FILE) -> list:
    """The requirements of a requirements file (``packaging`` Requirement objects)."""
    from packaging.requirements import Requirement
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    return [Requirement(line.split("#")[0].strip()) for line in lines if line.split("#")[0].strip()]


def installed_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def missing_requirements(requirements: Sequence) -> list:
    """The requirements that are not installed, or installed in a version outside their specifier."""
    missing = []
    for requirement in requirements:
        version = installed_version(requirement.name)
        if version is None or not requirement.specifier.contains(version, prereleases=True):
            missing.append(requirement)
    return missing


def protected_constraints() -> list[str]:
    """pip constraints pinning the installed protected packages (``numpy==2.1.3`` …)."""
    return [f"{name}=={version}" for name in PROTECTED_PACKAGES if (version := installed_version(name))]


@dataclass(frozen=True)
class InstallStep:
    """One step of the first-run install, as the progress display shows it: "Step 2 of 3: installing …"."""

    number: int
    total: int
    action: str

    def __str__(self) -> str:
        return f"Step {self.number} of {self.total}: {self.action}"


def skip_message(test_name: str, missing: Sequence) -> str:
    """What a self-test shows for a test it skips because packages are missing: self-tests install nothing
    (Slicer's test machines run them in testing mode, where :class:`DependencyInstaller` refuses)."""
    return (f"Skipped {test_name}: it needs {', '.join(map(str, missing))}, which is not installed (self-tests "
            "install nothing; the module's Install button does)")


class DependencyInstaller:
    """Installs what LabelShare needs with the running Slicer's tools, after one confirmation.

    :param confirm: asks the user once (message, the requirements one per line); True to go ahead
        (``slicer.util.confirmOkCancelDisplay`` in Slicer).
    :param install_torch: installs torch for a requirement such as ``torch>=2.4.1`` without asking again, also
        replacing an older torch (PyTorchUtils in Slicer); raises when it fails.
    :param pip_ensure: ``slicer.packaging.pip_ensure`` (Slicer ≥ 5.12), called with ``prompt_install=False``.
    :param pip_install: without ``pip_ensure``: ``slicer.util.pip_install``, given its arguments as a list (it
        splits a string like a shell, which breaks paths with spaces or Windows backslashes).
    :param testing: Slicer runs in testing mode: nothing is installed (:meth:`ensure` raises, naming what is missing).
    """

    def __init__(self, confirm: Callable[[str, str], bool], install_torch: Callable[[str], None],
                 pip_ensure: Callable | None = None, pip_install: Callable[[list[str]], None] | None = None,
                 testing: bool = False):
        if (pip_ensure is None) == (pip_install is None):
            raise ValueError("give pip_ensure or pip_install")
        self.confirm = confirm
        self.install_torch = install_torch
        self.pip_ensure = pip_ensure
        self.pip_install = pip_install
        self.testing = testing

    @staticmethod
    def missing(requirements_file: str | Path = REQUIREMENTS_FILE) -> list:
        """The requirements (torch included) still to install; empty when all is there."""
        from packaging.requirements import Requirement
        return missing_requirements([Requirement(TORCH_REQUIREMENT)] + read_requirements(requirements_file))

    def ensure(self, requirements_file: str | Path = REQUIREMENTS_FILE,
               on_step: Callable[[InstallStep], None] | None = None) -> list[str]:
        """Install whatever is missing; returns what was asked for (empty when nothing was missing).

        :param on_step: called before each step, after the user agreed (what is installed, step i of n): the
            install takes minutes, and a wait cursor alone looks like a hang (issue 27).
        """
        missing = self.missing(requirements_file)
        if not missing:
            return []
        listed = ", ".join(map(str, missing))
        if self.testing:
            raise DependencyError(f"Slicer runs in testing mode, where {REQUESTER} installs no packages; missing: "
                                  f"{listed}")
        needs_torch = any(requirement.name == "torch" for requirement in missing)
        size = "; about 2-3 GB with PyTorch" if needs_torch else ""
        if not self.confirm(f"{REQUESTER} needs these Python packages{' (PyTorch first)' if needs_torch else ''}. "
                            f"Install them now (a few minutes{size})?", "\n".join(map(str, missing))):
            raise DependencyError("installation of the Python packages LabelShare needs was declined")
        packages = [str(requirement) for requirement in missing if requirement.name != "torch"]
        actions = ([f"installing PyTorch ({TORCH_REQUIREMENT}) through the PyTorch extension: it downloads about "
                    "2-3 GB, which takes minutes"] if needs_torch else [])
        actions += [f"installing {', '.join(packages)} with pip"] if packages else []
        actions.append("checking the installed packages")
        steps = iter(InstallStep(number, len(actions), action) for number, action in enumerate(actions, 1))
        show = on_step or (lambda step: None)
        if needs_torch:
            show(next(steps))
            self.install_torch(TORCH_REQUIREMENT)
        if packages:
            show(next(steps))
            with tempfile.TemporaryDirectory(prefix="LabelShare-", dir=temporary_root()) as folder:
                constraints = Path(folder) / "constraints.txt"
                constraints.write_text("\n".join(protected_constraints()) + "\n", encoding="utf-8")
                if self.pip_ensure is not None:
                    self.pip_ensure(packages, constraints=str(constraints), requester=REQUESTER, prompt_install=False)
                else:
                    self.pip_install([*packages, "-c", str(constraints)])
        show(next(steps))
        still_missing = self.missing(requirements_file)
        if still_missing:
            raise DependencyError(f"still missing after installation: {', '.join(map(str, still_missing))}; see the "
                                  "Troubleshooting section of LabelShare's Slicer guide (docs/slicer.md)")
        return [str(requirement) for requirement in missing]


def confirm_in_slicer(message: str, details: str) -> bool:
    """The one question before anything is installed (the installers are then called without asking)."""
    import slicer.util
    return slicer.util.confirmOkCancelDisplay(message, detailedText=details)


def install_torch_in_slicer(requirement: str) -> None:
    """torch through the PyTorch extension, which picks the build that matches the GPU driver (and replaces a torch
    older than ``requirement``); the user has already confirmed."""
    try:
        import PyTorchUtils
    except ModuleNotFoundError:
        raise DependencyError("LabelShare needs PyTorch: install the 'PyTorch' extension with the Extensions "
                              "Manager, restart Slicer and try again.") from None
    PyTorchUtils.PyTorchUtilsLogic().installTorch(askConfirmation=False,
                                                  torchVersionRequirement=requirement[len("torch"):])


def slicer_pip_tools() -> dict:
    """``slicer.packaging.pip_ensure`` on Slicer ≥ 5.12, else ``slicer.util.pip_install``."""
    try:
        from slicer.packaging import pip_ensure
    except ImportError:
        import slicer.util
        return {"pip_install": slicer.util.pip_install}
    return {"pip_ensure": pip_ensure}


def ensure_dependencies() -> list[str]:
    """Install whatever LabelShare still needs with the running Slicer's tools, after one question, showing each
    step in Slicer's progress dialog (what is installed, step i of n); in Slicer's testing mode nothing is installed
    (raises, naming what is missing). Returns what was installed."""
    application = slicer_application()
    testing = bool(application is not None and application.testingEnabled())
    installer = DependencyInstaller(confirm_in_slicer, install_torch_in_slicer, **slicer_pip_tools(), testing=testing)
    dialog = None

    def show(step: InstallStep) -> None:
        nonlocal dialog
        import slicer.util
        if dialog is None:
            dialog = slicer.util.createProgressDialog(windowTitle=f"{REQUESTER}: installing Python packages",
                                                      maximum=step.total, value=0)
        dialog.labelText = str(step)
        dialog.value = step.number - 1
        application.processEvents()  # paint the text before the step blocks

    try:
        return installer.ensure(on_step=show)
    finally:
        if dialog is not None:
            dialog.close()
