"""Shared set-up of the benchmark scripts: an untrained model with the default configuration (throughput does not
depend on the weights) and memory probes."""

from __future__ import annotations

import resource
import threading
import time

import psutil
import torch

from labelshare.core.config import NetworkConfig
from labelshare.core.labelspace import LabelEntry, LabelSpace, LabelStats, TaskEntry
from labelshare.core.modelfolder import ModelConfig
from labelshare.core.plans import PlanSettings, TaskPlan
from labelshare.engine.models import Model, cpu_description
from labelshare.engine.networks import build_network

DEFAULT_PLAN = TaskPlan(patch_size=(192, 192), spacing=(1.0, 1.0))


def default_model(plan: TaskPlan = DEFAULT_PLAN, device: str = "cpu", n_shared: int = 3) -> Model:
    """An untrained model with the default network whose two tasks have ``plan`` (speed does not depend on the
    weights)."""
    stats = LabelStats(relative_size=0.1, frequency=1.0, slices_with_label=1)
    tasks = {f"task{t}": TaskEntry(name=f"task{t}", labels=[LabelEntry(f"label{k}", k, k, stats)
                                                            for k in range(1, n_shared + 1)], plan=plan)
             for t in range(2)}
    space = LabelSpace(tasks, plan_settings=PlanSettings())
    config = ModelConfig(method="label-sharing", layout="shared", network=NetworkConfig(out_channels=n_shared + 1))
    network = build_network(config.network).to(device).eval()
    return Model(path=None, config=config, labelspace=space, network=network, device=torch.device(device))


class PeakMemory:
    """Peak resident memory of this process while the block runs (sampled every 10 ms), and peak GPU memory."""

    def __enter__(self) -> PeakMemory:
        self.process = psutil.Process()
        self.start_rss = self.process.memory_info().rss
        self.peak_rss = self.start_rss
        self._running = True
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        return self

    def _sample(self) -> None:
        while self._running:
            self.peak_rss = max(self.peak_rss, self.process.memory_info().rss)
            time.sleep(0.01)

    def __exit__(self, *exc) -> None:
        self._running = False
        self._thread.join()
        self.peak_gpu = torch.cuda.max_memory_allocated() if torch.cuda.is_available() else 0

    def describe(self) -> str:
        growth = (self.peak_rss - self.start_rss) / 2**20
        max_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10
        text = f"peak host RSS {self.peak_rss / 2**20:.0f} MiB (+{growth:.0f} MiB in the run; max {max_rss:.0f} MiB)"
        if self.peak_gpu:
            text += f", peak GPU memory {self.peak_gpu / 2**20:.0f} MiB"
        return text


def machine(device: str = "auto") -> str:
    """What a figure was measured on: the GPU, or the CPU (processor, vector instructions, cores, torch threads)
    when there is none or ``device`` is ``cpu``; and torch's version."""
    if device != "cpu" and torch.cuda.is_available():
        return f"GPU {torch.cuda.get_device_name(0)}, torch {torch.__version__}"
    threads = torch.get_num_threads()
    return f"CPU ({cpu_description()}, {threads} torch thread{'s' if threads > 1 else ''}), torch {torch.__version__}"


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()
