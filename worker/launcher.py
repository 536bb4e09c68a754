"""``python -m worker --devices all|0,1,3|cpu:N [--workers-per-device K]``: K worker processes per device, supervised.

Children are started with the ``spawn`` method, and the parent never imports CUDA (it counts GPUs
with ``nvidia-smi``), so each child initialises its own device cleanly. A child that dies is
restarted with a capped back-off; SIGTERM/SIGINT stops every child gracefully (each finishes the
batch in hand), and a second signal kills them. Several processes per device (``--workers-per-device``)
are Triton's several model instances per GPU in our terms: each has its own GIL, so the per-image
Python work of one process (take, decode hand-offs, finish) no longer caps the device. Each child gets
its own ports (base + index) and, where they were left at 0 (automatic), its share of the machine's
cores for decode and intra-op threads.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from dataclasses import asdict, replace

from .backoff import Backoff
from .config import WorkerSettings
from .scrape import child_metrics_port

log = logging.getLogger(__name__)

HEALTHY_AFTER_S = 60.0  # a child that ran this long starts over at the shortest back-off
SETUP_EXIT = 2  # serve_one's status for a model that won't load, Redis refusing us, a name taken
STOP_MARGIN_S = 10.0  # past a child's --shutdown-timeout-s (its batch, its exit): 30 + 10 < a pod's 45 s grace


def count_gpus() -> int:
    """NVIDIA GPUs visible to this process, without initialising CUDA here (nvidia-smi, CUDA_VISIBLE_DEVICES)."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return len([d for d in visible.split(",") if d.strip() and d.strip() != "-1"])
    if shutil.which("nvidia-smi") is None:
        return 0
    out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30)
    return sum(1 for line in out.stdout.splitlines() if line.startswith("GPU "))


def parse_devices(spec: str) -> list[str]:
    """``all`` -> every GPU; ``0,1,3`` -> those GPUs; ``cpu:N`` -> N CPU workers. Raise ``SystemExit``."""
    spec = spec.strip().lower()
    if spec.startswith("cpu"):
        count = int(spec.partition(":")[2] or 1)
        if count < 1:
            raise SystemExit("worker: --devices cpu:N needs N >= 1")
        return ["cpu"] * count
    if spec == "all":
        gpus = count_gpus()
        if gpus == 0:
            raise SystemExit(
                "worker: --devices all: no NVIDIA GPU found on this machine (nvidia-smi lists none); "
                "use --devices cpu:N for CPU workers"
            )
        return [f"cuda:{k}" for k in range(gpus)]
    try:
        return [f"cuda:{int(k)}" for k in spec.split(",") if k.strip()]
    except ValueError:
        raise SystemExit(f"worker: --devices must be all, a list like 0,1,3, or cpu:N; got {spec!r}") from None


def usable_cores() -> int:
    """Cores this process may run on (its affinity mask, as a container's CPU set shows)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def plan_children(
    settings: WorkerSettings, devices: list[str], cores: int | None = None, lock_dir: str = ""
) -> list[WorkerSettings]:
    """Each child's settings: ``--workers-per-device`` children per device, in device order, each with its own
    ports and name index, its share of ``cores`` for threads left automatic (0), and, with K > 1 and a
    ``lock_dir``, a reload lock per device (unless ``--reload-lock`` names one)."""
    per_device = max(1, settings.workers_per_device)
    count = per_device * len(devices)

    def lock(device: str) -> str:
        if settings.reload_lock or per_device == 1 or not lock_dir:
            return settings.reload_lock
        return os.path.join(lock_dir, device.replace(":", "") + ".reload.lock")

    children = [d for d in devices for _ in range(per_device)]
    share = max(1, (settings.cpus or cores or usable_cores()) // count)
    split = count > 1 or settings.cpus > 0  # one process alone picks its own threads, unless told its CPUs
    port, health = settings.metrics_port, settings.health_port

    def metrics_port(i: int) -> int:  # several children: the launcher serves their merged page on the base port
        return 0 if not port else port if count == 1 else child_metrics_port(port, i)

    def health_port(i: int) -> int:  # one port for both (the probes are on the metrics port too): the launcher's
        return 0 if not health or (count > 1 and health == port) else health + i  # page answers the pod's probes

    planned = [
        replace(
            settings,
            device=device,
            devices="",
            workers_per_device=1,
            metrics_port=metrics_port(i),
            health_port=health_port(i),
            # a fixed --name gets the child's index: same-named workers would take each other for restarts
            name=f"{settings.name}:{i}" if settings.name else "",
            decode_threads=settings.decode_threads or (share if split else 0),
            torch_threads=settings.torch_threads or (share if split else 0),
            reload_lock=lock(device),
        )
        for i, device in enumerate(children)
    ]
    _check_ports(planned, port if count > 1 else 0)
    return planned


def _check_ports(children: list[WorkerSettings], page: int) -> None:
    """Every port the launcher and its children listen on, distinct; ``SystemExit`` with one line otherwise."""
    ports = [p for p in [page] + [p for c in children for p in dict.fromkeys((c.metrics_port, c.health_port))] if p]
    if len(ports) != len(set(ports)):
        raise SystemExit(
            f"worker: ports overlap: with {len(children)} worker processes, --metrics-port P serves the launcher's "
            f"page and P+1..P+{len(children)} the processes' own, --health-port H serves H..H+{len(children) - 1}; "
            "give them ranges that do not meet (or the same port for both)"
        )


def _child(settings: dict) -> None:
    """Entry point of one spawned worker process: its exit status is ``serve_one``'s (a name taken: 2)."""
    from .serve import exit_now, serve_one

    exit_now(serve_one(WorkerSettings(**settings)))


class Launcher:
    """Starts, restarts and stops ``--workers-per-device`` worker processes per device."""

    def __init__(self, settings: WorkerSettings, devices: list[str]) -> None:
        self.context = multiprocessing.get_context("spawn")
        # the K children on a device reload a new model version one at a time (worker.reload.ReloadTurn)
        self.lock_dir = "" if settings.workers_per_device < 2 else tempfile.mkdtemp(prefix="adclassify-")
        try:
            self.settings = [asdict(child) for child in plan_children(settings, devices, lock_dir=self.lock_dir)]
        except SystemExit:
            self.clean_up()
            raise
        count = len(self.settings)
        self.metrics_port = settings.metrics_port if count > 1 else 0  # the children's merged page (worker.scrape)
        self.procs: list[multiprocessing.process.BaseProcess | None] = [None] * count
        self.started = [0.0] * count
        self.backoff = [Backoff(1.0) for _ in range(count)]  # between restarts of each child
        self.restarts = [0] * count  # on the merged metrics page
        self.stop_wait_s = settings.shutdown_timeout_s + STOP_MARGIN_S  # after SIGTERM, before a child is killed
        self.stop = threading.Event()

    def _start(self, i: int) -> None:
        proc = self.context.Process(target=_child, args=(self.settings[i],), name=f"worker-{i}")
        # SIGHUP stays blocked in the child until its handler is installed (``serve_one``): a reload forwarded
        # to a child still starting would end it (the default action); it loads the current file anyway
        blocked = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGHUP})
        try:
            proc.start()
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
        self.procs[i], self.started[i] = proc, time.monotonic()
        log.info("started worker %d on %s (pid %d)", i, self.settings[i]["device"], proc.pid)

    def run(self) -> int:
        """Supervise until stopped; return 0 once every child has exited. With ``--burst``, a child that exits 0
        (its queue was empty) or 2 (its set-up failed: it would at every restart) is done, not restarted, and the
        launcher returns the worst status when every child is done."""
        with contextlib.ExitStack() as stack:
            stack.callback(self.clean_up)
            self._serve_metrics(stack)
            return self._supervise()

    def clean_up(self) -> None:
        """Remove the reload locks' directory."""
        if self.lock_dir:
            shutil.rmtree(self.lock_dir, ignore_errors=True)

    def _serve_metrics(self, stack: contextlib.ExitStack) -> None:
        """With several children and ``--metrics-port``: their metrics as one page on that port (one target)."""
        if not self.metrics_port:
            return
        from .health import ProbeServer
        from .scrape import ChildrenPage

        page = ChildrenPage([child["metrics_port"] for child in self.settings], restarts=lambda: list(self.restarts))
        stack.callback(page.close)
        server = ProbeServer(self.metrics_port, page)
        stack.callback(server.close)
        log.info("the %d worker processes' metrics: http://0.0.0.0:%d/metrics", len(self.settings), server.port)

    def _supervise(self) -> int:
        for i in range(len(self.procs)):
            self._start(i)
        due: dict[int, float] = {}
        done: dict[int, int] = {}  # --burst: children that will not run again, by exit status
        while not self.stop.wait(0.2):
            for i, proc in enumerate(self.procs):
                if proc is not None and not proc.is_alive() and i not in due and i not in done:
                    if self.settings[i]["burst"] and proc.exitcode in (0, SETUP_EXIT):
                        if proc.exitcode:  # it would fail the same way at every restart: a batch job must end
                            log.error("worker %d exited with %d (see its log): not restarted in --burst", i, SETUP_EXIT)
                        done[i] = proc.exitcode
                        continue
                    ran = time.monotonic() - self.started[i]
                    if ran > HEALTHY_AFTER_S:
                        self.backoff[i].reset()
                    delay_s = self.backoff[i].next()
                    log.warning(
                        "worker %d (pid %d) exited with %s; restarting in %.0f s", i, proc.pid, proc.exitcode, delay_s
                    )
                    due[i] = time.monotonic() + delay_s
            if len(done) == len(self.procs):
                return max(done.values())
            for i, when in list(due.items()):
                if time.monotonic() >= when:
                    del due[i]
                    self.restarts[i] += 1
                    self._start(i)
        return max([self._stop_children(), *done.values()])  # a --burst child's failed set-up is not forgotten

    def _stop_children(self) -> int:
        """SIGTERM every child, wait for them together (each finishes its batch; with Redis down it waits
        ``--shutdown-timeout-s``), then kill what still runs: a wedged child would hold the launcher's exit (and
        a pod's termination) until someone else's SIGKILL."""
        alive = [p for p in self.procs if p is not None and p.is_alive()]
        for proc in alive:
            os.kill(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + self.stop_wait_s
        for proc in alive:
            proc.join(timeout=max(0.0, deadline - time.monotonic()))
        for proc in alive:
            if proc.is_alive():
                log.error("worker (pid %d) still running %.0f s after SIGTERM: killed", proc.pid, self.stop_wait_s)
                proc.kill()
                proc.join(5)
        return 0

    def forward(self, signum: int) -> None:
        """Pass ``signum`` to every live child (SIGHUP: each loads the new model version itself)."""
        for proc in self.procs:
            if proc is not None and proc.is_alive():
                with contextlib.suppress(ProcessLookupError):  # it ended meanwhile (the supervisor restarts it)
                    os.kill(proc.pid, signum)

    def kill_children(self) -> None:
        """Second signal: no grace."""
        for proc in self.procs:
            if proc is not None and proc.is_alive():
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
