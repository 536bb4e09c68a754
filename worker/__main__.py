"""``python -m worker``: run a batch worker, or ``python -m worker export`` to build a model file."""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
from pathlib import Path

from .config import WorkerSettings, add_arguments, redis_url_problem, settings_from
from .serve import serve_one, setup_logging

log = logging.getLogger("worker")


def run_main(argv: list[str]) -> int:
    """Parse run flags, install signal handlers, and serve until stopped."""
    parser = argparse.ArgumentParser(
        prog="python -m worker",
        description="Batch image-classification worker: drains an RQ queue in batches, runs a TorchScript "
        "model, publishes each result. Every flag has an environment twin. "
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
    setup_logging(settings)
    log.info("effective configuration %s", json.dumps(settings.public(), sort_keys=True))
    if settings.devices or settings.workers_per_device > 1:
        return launch(settings)
    return serve_one(settings)


def launch(settings: WorkerSettings) -> int:
    """Supervised worker processes: ``--workers-per-device`` per device of ``--devices`` (or of ``--device``)."""
    from .launcher import Launcher, parse_devices

    launcher = Launcher(settings, parse_devices(settings.devices) if settings.devices else [settings.device])

    def on_signal(signum: int, _frame: object) -> None:
        if launcher.stop.is_set():
            log.warning("second signal %s: killing the workers", signum)
            launcher.kill_children()
            os._exit(1)
        log.info("signal %s: stopping the workers gracefully", signum)
        launcher.stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    return launcher.run()


def export_main(argv: list[str]) -> int:
    """Build a model file from the demo preset or from any ``module:factory``."""
    from .decode.cpu import Preprocess
    from .export import ExportError, ExportSpec, demo_spec, export, read_labels

    parser = argparse.ArgumentParser(prog="python -m worker export", description="Build a model file.")
    parser.add_argument("--out", type=Path, required=True, help="where to write the model file")
    parser.add_argument("--demo", action="store_true", help="EfficientNet-Lite0, real ImageNet weights")
    parser.add_argument("--factory", help="package.module:function returning an nn.Module")
    parser.add_argument("--weights", type=Path, help="state dict to load into the factory's module")
    parser.add_argument("--labels", type=Path, help="labels: JSON list or one name per line")
    parser.add_argument("--name", help="model name (default: the output file's stem)")
    parser.add_argument("--version", default="1", help="model version (default: 1)")
    parser.add_argument("--size", type=int, nargs=2, metavar=("H", "W"), default=[224, 224])
    parser.add_argument("--resize", choices=["center_crop", "stretch"], default="center_crop")
    parser.add_argument("--mean", type=float, nargs=3, default=[0.485, 0.456, 0.406], help="per channel, 0..1")
    parser.add_argument("--std", type=float, nargs=3, default=[0.229, 0.224, 0.225], help="per channel, 0..1")
    parser.add_argument("--method", choices=["trace", "script"], default="trace")
    parser.add_argument("--if-missing", action="store_true", help="do nothing when --out exists")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    if args.if_missing and args.out.exists():
        print(f"{args.out} exists; nothing to do")
        return 0
    if args.demo:
        spec = demo_spec(args.out)
    elif args.factory:
        pre = Preprocess(tuple(args.size), args.resize, tuple(args.mean), tuple(args.std))
        labels = read_labels(args.labels) if args.labels else None
        spec = ExportSpec(
            factory=args.factory, out=args.out, name=args.name or args.out.stem, version=args.version,
            preprocess=pre, labels=labels, weights=args.weights, method=args.method,
        )  # fmt: skip
    else:
        parser.error("give --demo or --factory")
    try:
        summary = export(spec)
    except ExportError as exc:
        print(f"export failed: {exc}", file=sys.stderr)
        return 1
    print(f"wrote {summary['path']}: {summary['model']}, {summary['classes']} classes, "
          f"max abs diff vs eager {summary['max_abs_diff']:.2e}")  # fmt: skip
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
    sys.exit(main())
