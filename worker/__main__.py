"""``python -m worker``: run a batch worker, or ``python -m worker export`` to build a model file."""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import os
import signal
import sys
from dataclasses import replace
from pathlib import Path

from .config import WorkerSettings, add_arguments, redis_url_problem, settings_from
from .serve import exit_now, serve_one, setup_logging
from .signals import SignalThread

log = logging.getLogger("worker")


def run_main(argv: list[str]) -> int:
    """Parse run flags, install signal handlers, and serve until stopped."""
    parser = argparse.ArgumentParser(
        prog="python -m worker",
        description="Batch image-classification worker: drains an RQ queue in batches, runs a TorchScript or "
        "AOTInductor (.pt2) model, publishes each result. Every flag has an environment twin. "
        "See also: python -m worker export --help",
    )
    add_arguments(parser)
    settings = settings_from(parser.parse_args(argv))
    problem = redis_url_problem(settings)
    if problem:
        parser.exit(2, f"worker: {problem}\n")
    if not Path(settings.model).is_file():  # one line and a way out, not a traceback from torch.jit.load
        parser.exit(2, f"worker: no model file at {settings.model}; build the demo model with 'python -m worker "
                       f"export --demo --out {settings.model}' (or pass --model / WORKER_MODEL)\n")  # fmt: skip
    if settings.metrics_port and importlib.util.find_spec("prometheus_client") is None:  # not after a model load
        parser.exit(2, "worker: --metrics-port needs prometheus-client: pip install 'adclassify[metrics]'\n")
    setup_logging(settings)
    log.info("effective configuration %s", json.dumps(settings.public(), sort_keys=True))
    if settings.devices or settings.workers_per_device > 1:
        return launch(settings)
    from .launcher import plan_children

    (alone,) = plan_children(settings, [settings.device])  # threads left at 0: from --cpus when given
    return serve_one(replace(settings, decode_threads=alone.decode_threads, torch_threads=alone.torch_threads))


def launch(settings: WorkerSettings) -> int:
    """Supervised worker processes: ``--workers-per-device`` per device of ``--devices`` (or of ``--device``)."""
    from .launcher import Launcher, parse_devices

    launcher = Launcher(settings, parse_devices(settings.devices) if settings.devices else [settings.device])

    def on_signal(signum: int) -> None:
        if launcher.stop.is_set():
            log.warning("second signal %s: killing the workers", signum)
            launcher.kill_children()
            launcher.clean_up()
            os._exit(1)
        log.info("signal %s: stopping the workers gracefully", signum)
        launcher.stop.set()

    forward = launcher.forward  # SIGHUP: a new model version, each child loads it
    SignalThread({signal.SIGTERM: on_signal, signal.SIGINT: on_signal, signal.SIGHUP: forward}).install()
    return launcher.run()


def export_main(argv: list[str]) -> int:
    """Build a model file (TorchScript, or an AOTInductor ``.pt2`` package) from the demo preset or a factory."""
    from .export import ExportError, add_arguments, export, spec_from

    parser = argparse.ArgumentParser(
        prog="python -m worker export",
        description="Build a model file: TorchScript (.pt) or an AOTInductor package (.pt2), with labels, "
        "preprocessing and name@version. See docs/model-format.md.",
    )
    add_arguments(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    if args.if_missing and args.out.exists():
        print(f"{args.out} exists; nothing to do")
        return 0
    if not (args.demo or args.factory):
        parser.error("give --demo or --factory")
    try:
        summary = export(spec_from(args), progress=lambda line: print(line, flush=True))
    except ExportError as exc:
        print(f"export failed: {exc}", file=sys.stderr)
        return 1
    print(
        f"wrote {summary['path']}: {summary['model']}, {summary['classes']} classes, "
        f"max abs diff vs eager {summary['max_abs_diff']:.2e}"
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    """Dispatch: ``export`` builds a model file, ``bench`` reports the five practices; else run a worker."""
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "export":
        return export_main(argv[1:])
    if argv and argv[0] == "bench":
        from .practices import main as bench_main

        return bench_main(argv[1:])
    return run_main(argv)


if __name__ == "__main__":
    exit_now(main())
