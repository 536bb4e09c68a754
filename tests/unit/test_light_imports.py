"""What must stay light: the settings, the launcher's parent and the decoder never load torch."""

from __future__ import annotations

import subprocess
import sys

from ..conftest import ROOT


def loads_torch(code: str) -> bool:
    out = subprocess.run(
        [sys.executable, "-c", f"import sys\n{code}\nprint('torch' in sys.modules)"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    return out.stdout.strip().splitlines()[-1] == "True"


def test_settings_launcher_and_decoder_do_not_import_torch():
    assert not loads_torch(
        "import worker.config, worker.launcher, worker.decode.cpu, worker.decode.pool, worker.decode.header"
    )
    assert not loads_torch("import producer, producer.wire.keys, producer.wire.jobs, producer.wire.results")


def test_worker_help_does_not_import_torch():
    code = "from worker.__main__ import main\ntry:\n    main(['--help'])\nexcept SystemExit:\n    pass"
    assert not loads_torch(code)
