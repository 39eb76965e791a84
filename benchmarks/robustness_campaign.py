"""Robustness campaign (issue #11): bad inputs and kills over every command and the worker, each outcome classified.

    labelshare-bench robustness [--out DIR] [--jobs 1] [--seed 0] [--timeout 180] [--only TEXT]

On small synthetic tasks (:mod:`labelshare.core.synthetic`) it runs

- **bad inputs**: every command (``labelspace build/show``, ``train``, ``segment``, ``evaluate``, ``postprocess``,
  ``add-task``, ``models``, ``demo``) and the worker with damaged, tampered, truncated, oversized or contradictory
  input, each in a ``labelshare`` process of its own (the worker: one process answering all its requests), plus a
  full and a read-only disk where a small tmpfs can be mounted (root); and a few good inputs as controls;
- **kills**: ``train``, ``add-task``, ``segment``, ``labelspace build``, ``evaluate``, the worker and the case
  collection stopped by SIGKILL or SIGTERM at a random moment of a normal run; then the folder is checked and the
  interrupted work continued (``--resume``, or the same command again).

Every probe ends in one outcome:

``clear error``       status 1 (2 for a usage error, 4 when some images of a batch failed, 75 when stopped by a
                      signal) and one last line ``labelshare: error|stopped: ...`` (the worker: an ``error``
                      event), no traceback
``unclear error``     such a line that does not say what the probe's finding asks it to say, or that comes after
                      other lines (ITK's warnings)
``done``              a control, or a killed run whose folder was intact and whose work was continued
``traceback``         a Python traceback, or a failure without the one-line message (a crash)
``wrongly accepted``  success for an input that must be refused
``hang``              no end within ``--timeout`` seconds
``damaged``           a pre-existing output or model changed, a half-written file under a final name, a temporary
                      file left behind, or a staging folder that blocks the next run

The campaign's parts: the fixtures, the damage and the checks of what a command left behind
(:mod:`.robustness_fixtures`), the bad inputs (:mod:`.robustness_probes`), running and classifying a probe
(:mod:`.robustness_runner`), the worker's requests (:mod:`.robustness_worker`), the kills (:mod:`.robustness_kills`),
and issue 31's probes (stops that stop, outputs only when something was done, a first contact without waiting:
:mod:`.robustness_stops_and_checks`, ``--only 31.``); this module runs them all and reports.

It prints one line per probe and the totals, writes ``robustness.json`` to ``--out``, and exits with status 0
when tracebacks, unclear errors, wrongly accepted, hangs and damaged are all 0.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from . import robustness_stops_and_checks as issue_31
from .robustness_fixtures import ENV, digest, Fixtures, make_fixtures
from .robustness_kills import KILLS, kills, run_kill
from .robustness_probes import Probe, bad_input_probes
from .robustness_runner import BAD_OUTCOMES, Result, run_probe
from .robustness_worker import WorkerProbe, run_worker_probes, worker_probes


# -- the campaign -----------------------------------------------------------------------------------------------------
def all_bad_input_probes() -> list[Probe]:
    """Every bad input of the campaign (and its controls): the first campaign's and issue 31's."""
    return bad_input_probes() + issue_31.bad_input_probes()


def all_worker_probes() -> list[WorkerProbe]:
    """Every worker request of the campaign: the first campaign's and issue 31's."""
    return worker_probes() + issue_31.worker_probes()


def timing_runs(fixtures: Fixtures, folder: Path, timeout: float) -> tuple[dict[str, float], list[Result]]:
    """One normal run of every command that is killed later (a control each): how long it takes."""
    durations, results = {}, []
    for kind, (prepare, check, _) in KILLS.items():
        d = folder / kind.replace(" ", "-")
        d.mkdir(parents=True)
        argv = prepare(fixtures, d)
        command = [sys.executable, *argv] if kind in ("worker", "collection") else \
            [sys.executable, "-m", "labelshare", *argv]
        start = time.monotonic()
        run = subprocess.run(command, cwd=d, capture_output=True, text=True, timeout=timeout, env=ENV)
        durations[kind] = time.monotonic() - start
        problem = check(fixtures, d) if run.returncode == 0 else run.stderr.strip()[-300:]
        results.append(Result(f"control: {kind} (timing run)", "control", "control failed" if problem else "done",
                              problem, durations[kind]))
    return durations, results


def fixture_problem(fixtures: Fixtures, before: dict[str, str]) -> str:
    after = {str(p): h for folder in (fixtures.root / "data", fixtures.model) for p, h in digest(folder).items()}
    changed = sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k))
    return f"shared fixtures changed: {changed[:5]}" if changed else ""


def result_line(result: Result) -> str:
    mark = "  " if result.outcome in ("clear error", "done") else "!!"
    return f"{mark} {result.name:<52} {result.outcome:<16} {result.seconds:5.1f} s  {result.detail[:150]}"


def print_report(results: list[Result], seconds: float) -> dict:
    problems = [r for r in results if r.outcome not in ("clear error", "done")]
    if problems:
        print("\nproblems:")
        for r in problems:
            print(result_line(r))
    totals = Counter(r.outcome for r in results)
    kinds = Counter(r.kind for r in results)
    print(f"\ntotals ({seconds / 60:.1f} min):")
    for label, value in (("bad inputs", kinds["bad input"] + kinds["worker"]),
                         ("  to commands", kinds["bad input"]), ("  to the worker", kinds["worker"]),
                         ("kills", kinds["kill"]), ("controls", kinds["control"]),
                         ("clear errors", totals["clear error"]), ("tracebacks", totals["traceback"]),
                         ("unclear errors", totals["unclear error"]),
                         ("wrongly accepted", totals["wrongly accepted"]), ("hangs", totals["hang"]),
                         ("files damaged", totals["damaged"]), ("controls failed", totals["control failed"])):
        print(f"  {label:<17} {value}")
    return {"totals": dict(totals), "kinds": dict(kinds), "seconds": round(seconds, 1),
            "results": [vars(r) for r in results]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="labelshare-bench robustness", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=None,
                        help="working folder (kept; default: a temporary folder, removed at the end)")
    parser.add_argument("--jobs", type=int, default=1,
                        help="probes run at the same time; more than one only with a core each "
                             "(default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the kill moments (default: %(default)s)")
    parser.add_argument("--timeout", type=float, default=180.0,
                        help="seconds after which a probe counts as a hang (default: %(default)s)")
    parser.add_argument("--only", action="append", default=[], metavar="TEXT",
                        help="run only probes whose name contains this text (repeat for several)")
    args = parser.parse_args(argv)
    if args.out is not None and args.out.exists() and any(args.out.iterdir()):
        print(f"labelshare-bench robustness: error: {args.out}: not empty; choose a new --out", file=sys.stderr)
        return 1
    root = (args.out or Path(tempfile.mkdtemp(prefix="labelshare-robustness-"))).resolve()  # probes run elsewhere
    root.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    print(f"fixtures in {root} ...", flush=True)
    fixtures = make_fixtures(root / "fixtures")
    before = {str(p): h for folder in (fixtures.root / "data", fixtures.model) for p, h in digest(folder).items()}
    # the normal runs time the kills; a selection (--only) without kills needs none
    def chosen(name: str) -> bool:
        return not args.only or any(text in name for text in args.only)

    if any(chosen(kill.name) for kill in kills(args.seed, dict.fromkeys(KILLS, 1.0))):
        durations, results = timing_runs(fixtures, root / "timing", args.timeout)
        print("normal runs (s): " + ", ".join(f"{k} {v:.1f}" for k, v in durations.items()), flush=True)
    else:
        durations, results = {}, []
    probes = [p for p in all_bad_input_probes() if chosen(p.name)]
    planned_kills = [k for k in kills(args.seed, durations) if chosen(k.name)] if durations else []
    workers = [p for p in all_worker_probes() if chosen(p.name)]
    tasks = [("probe", index, probe) for index, probe in enumerate(probes)] + \
        [("kill", index, kill) for index, kill in enumerate(planned_kills)]
    skipped = []

    def run(task) -> Result | None:
        kind, index, item = task
        folder = root / kind / f"{index:03d}"
        if kind == "kill":
            return run_kill(item, fixtures, folder, args.timeout)
        outcome = run_probe(item, fixtures, folder, args.timeout)
        if outcome is None:
            skipped.append(item.name)
        return outcome

    for result in results:
        print(result_line(result), flush=True)
    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        for result in pool.map(run, tasks):  # in order, each printed as soon as it and those before it end
            if result is not None:
                results.append(result)
                print(result_line(result), flush=True)
    if workers:
        answers = run_worker_probes(workers, fixtures, root / "worker", args.timeout)
        results += answers
        for result in answers:
            print(result_line(result), flush=True)
    for result in issue_31.run_probes(fixtures, root / "stops", args.timeout, chosen):
        results.append(result)
        print(result_line(result), flush=True)
    problem = fixture_problem(fixtures, before)
    if problem:
        results.append(Result("shared fixtures unchanged", "control", "damaged", problem))
    report = print_report(results, time.monotonic() - start)
    if skipped:
        print(f"\nskipped here ({len(skipped)}; they need a tmpfs (root) or a machine without CUDA): "
              + "; ".join(skipped))
    report["skipped"] = skipped
    (root / "robustness.json").write_text(json.dumps(report, indent=1))
    print(f"\nreport: {root / 'robustness.json'}")
    if args.out is None:
        shutil.rmtree(root, ignore_errors=True)
    bad = sum(report["totals"].get(outcome, 0) for outcome in (*BAD_OUTCOMES, "control failed"))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
