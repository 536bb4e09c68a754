"""AOTInductor ``.pt2`` model packages: build one from an eager module (``torch.export`` with a dynamic batch
dimension, compiled ahead of time for one device kind) carrying the model file's metadata, and load one
with ``torch._inductor.aoti_load_package``: no TorchScript call on this path.

The metadata travels as ``extra/`` entries of the PT2 archive (``package_pt2``'s ``extra_files``) and is read
back from the zip before the compiled library is loaded, so a package built for another device kind is
refused with one line instead of failing inside the loader.
"""

from __future__ import annotations

import json
import logging
import time
import warnings
import zipfile
from collections.abc import Callable, Mapping
from pathlib import Path

import torch

from . import cpuisa
from .modelfile import ModelError, ModelInfo, extra_entries, model_info

# errors of the device, not of the file, while a model loads: passed on as they are (a worker exits 1 and is
# restarted; a reload retries after a back-off), never worded as a bad model file (exit 2: final in --burst)
TRANSIENT: tuple[type[BaseException], ...] = (torch.OutOfMemoryError,) + (
    (torch.AcceleratorError,) if hasattr(torch, "AcceleratorError") else ()
)

log = logging.getLogger(__name__)

# torch.export for CUDA guards the batch at <= 65,535 (seen with torch 2.11; likely a kernel grid limit), and
# an unbounded Dim then fails to export: one range for every device, far above any batch the worker pads to.
MAX_BATCH = 65_535
# {"device": "cpu" | "cuda", "dtype": "float32", "batch": [1, MAX_BATCH], "torch": ..., "cpu": cpuisa.requirement()}
PACKAGE_FILE = "package.json"
PRECISIONS = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}
# freezing: weights become constants, so batch norms fold into convolutions and CPU convolutions use
# pre-packed oneDNN weights: the standard inference setting (on the shared 2-core CPU here it measured
# within the noise of not freezing; docs/model-format.md).
INDUCTOR_CONFIGS = {"freezing": True, "aot_inductor.package": True}


def build_package(
    module: torch.nn.Module,
    example: torch.Tensor,
    out: Path,
    extra: Mapping[str, str],
    progress: Callable[[str], None] = log.info,
    cpu_arch: str = "native",
) -> None:
    """Export ``module`` at ``example``'s device and dtype for batches of 1 to ``MAX_BATCH``, compile it with
    AOTInductor for ``cpu_arch`` (``worker.cpuisa``), and write the package with ``extra`` (the metadata
    entries) and ``package.json`` to ``out``."""
    from torch.export.pt2_archive._package import package_pt2  # the writer that takes extra_files

    arch_options = cpuisa.build_options(cpu_arch)  # an arch this machine cannot run is refused before any work
    start = time.perf_counter()
    progress(f"torch.export of {type(module).__name__} with a dynamic batch dimension ...")
    batch = torch.export.Dim("batch", min=1, max=MAX_BATCH)
    with torch.no_grad():
        program = torch.export.export(module, (example,), dynamic_shapes=({0: batch},))
    target = f"{example.device.type}, CPU code for {cpu_arch}"
    progress(f"AOTInductor: compiling for {target} (tens of seconds to minutes) ...")
    with warnings.catch_warnings():  # torch's own pytree deprecation, raised inside the compiler: not ours to act on
        warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)", category=FutureWarning)
        with torch._inductor.config.patch(arch_options):
            files = torch._inductor.aot_compile(program.module(), (example,), options=dict(INDUCTOR_CONFIGS))
            vector_flags = _vector_flags()
    dtype = str(example.dtype).removeprefix("torch.")
    facts = {"device": example.device.type, "dtype": dtype, "batch": [1, MAX_BATCH], "torch": torch.__version__}
    facts["cpu"] = cpuisa.requirement(cpu_arch, vector_flags)
    package_pt2(str(out), aoti_files=files, extra_files={**extra, PACKAGE_FILE: json.dumps(facts)})
    size_mb = out.stat().st_size / 1e6
    progress(f"packaged {out} ({size_mb:.1f} MB) in {time.perf_counter() - start:.0f} s")
    needs = ", ".join(facts["cpu"]["features"]) or "no recorded feature"
    progress(f"its CPU code needs {needs} ({cpu_arch}); a CPU without them refuses it")


def _vector_flags() -> str:
    """The gcc flags of the vector ISA Inductor compiles kernels for under the current config ('' if none)."""
    from torch._inductor.cpu_vec_isa import pick_vec_isa

    isa = pick_vec_isa()
    return isa.build_arch_flags() if isa else ""


def read_entries(path: str | Path) -> dict[str, str]:
    """The ``extra/`` entries of a PT2 archive (metadata and ``package.json``), without loading the model."""
    try:
        return extra_entries(path)
    except (OSError, zipfile.BadZipFile, UnicodeDecodeError) as exc:
        raise ModelError(f"{path}: not an AOTInductor .pt2 package ({exc})") from exc


class PackagedModel(torch.nn.Module):
    """A loaded package's compiled model behind ``nn.Module``'s call, so the ``Classifier`` runs both formats
    alike. It has no parameters: ``.to()`` moves nothing, the package runs where and how it was compiled."""

    def __init__(self, compiled: Callable[..., object], device: torch.device, dtype: torch.dtype) -> None:
        super().__init__()
        self.compiled, self.device, self.dtype = compiled, device, dtype
        self._ooms = _ooms(device)
        self.eval()

    def forward(self, x: torch.Tensor) -> object:
        try:
            return self.compiled(x)
        except RuntimeError as exc:
            # The compiled library reports a CUDA out-of-memory as a generic RuntimeError; the caching
            # allocator's OOM count tells it apart, so the caller splits the batch as for TorchScript.
            ooms, self._ooms = self._ooms, _ooms(self.device)
            if self._ooms > ooms:
                raise torch.OutOfMemoryError(f"out of memory in the AOTInductor package: {exc}") from exc
            raise


def _ooms(device: torch.device) -> int:
    if device.type != "cuda":
        return 0
    return int(torch.cuda.memory_stats(device).get("num_ooms", 0))


def _release(version: str) -> tuple[int, int] | None:
    parts = version.split("+")[0].split(".")
    try:
        return int(parts[0]), int(parts[1])
    except (IndexError, ValueError):
        return None


def _check_torch(path: str | Path, built_with: str) -> None:
    """A package's compiled code calls torch's C shim, kept working for newer torch releases (AOTInductor's
    compatibility promise), not for older ones: a package from a newer torch is refused in one line (an older
    one's crash would take the worker with it), one from an older torch is loaded with a warning."""
    built, here = _release(built_with), _release(torch.__version__)
    if built is None or here is None or built == here:
        return
    if built > here:
        raise ModelError(
            f"{path}: package built with torch {built_with}, newer than this worker's {torch.__version__}; "
            "export it again with the worker's torch"
        )
    log.warning("%s: package built with torch %s, this worker runs %s", path, built_with, torch.__version__)


def load_package(path: str | Path, device: torch.device) -> tuple[PackagedModel, ModelInfo]:
    """Load a package onto ``device`` with its metadata; ``ModelError`` (one line) when it was compiled for
    another device kind, lacks metadata, or cannot be loaded."""
    entries = read_entries(path)
    info = model_info(path, entries)
    try:
        facts = json.loads(entries[PACKAGE_FILE])
        built_for, dtype = str(facts["device"]), getattr(torch, str(facts["dtype"]))
        if not isinstance(dtype, torch.dtype):
            raise TypeError(f"not a dtype: {facts['dtype']}")
    except (KeyError, ValueError, TypeError, AttributeError) as exc:
        raise ModelError(f"{path}: package lacks a valid {PACKAGE_FILE} (see docs/model-format.md)") from exc
    if built_for != device.type:
        hint = f"export it again with --device {device.type}"
        raise ModelError(f"{path}: package compiled for {built_for}, cannot run on {device}; {hint}")
    _check_torch(path, str(facts.get("torch", "")))
    unmet = cpuisa.unmet(facts.get("cpu") if isinstance(facts.get("cpu"), dict) else None)
    if unmet:  # its code would die of an illegal instruction (SIGILL), taking the worker with it
        hint = "export it again on this kind of machine (x86: or with --cpu-arch x86-64-v3, for any AVX2 CPU)"
        raise ModelError(f"{path}: package {unmet}; {hint}")
    index = device.index if device.index is not None else -1
    try:
        compiled = torch._inductor.aoti_load_package(str(path), device_index=index)
    except TRANSIENT:  # the device full: not the package's fault (worker.model.TRANSIENT)
        raise
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if device.type == "cuda" and "out of memory" in str(exc).lower():
            # the compiled library allocates its constants with cudaMalloc: the device full, not a bad file
            raise torch.OutOfMemoryError(f"{path}: out of memory loading the package ({first[:160]})") from exc
        raise ModelError(f"{path}: cannot load the AOTInductor package ({first[:160]})") from exc
    return PackagedModel(compiled, device, dtype), info
