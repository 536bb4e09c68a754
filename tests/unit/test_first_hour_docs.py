"""What the README and the setup script promise a new user: the venv, `rq info --url`, a talkative
install that brings the dashboard and numpy, and help that keeps the README's promises."""

from __future__ import annotations

import re
import subprocess
import sys

from ..conftest import ROOT

README = (ROOT / "README.md").read_text()
SETUP = (ROOT / ".ci" / "setup").read_text()


def test_readme_says_to_use_the_venv_before_the_module_commands():
    assert "source .venv/bin/activate" in README and ".venv/bin/python -m worker" in README


def test_every_rq_info_command_in_the_readme_names_its_redis():
    commands = [c for c in re.findall(r"`(rq info[^`]*)`", README) if " -" in c]  # not the bare name
    assert commands and all("--url" in c for c in commands), commands


def test_setup_shows_what_it_installs_and_installs_the_dashboard_extra():
    long_steps = [line for line in SETUP.splitlines() if "pip install" in line and ("torch" in line or "-e '." in line)]
    assert len(long_steps) == 2 and not any(" -q" in line for line in long_steps), long_steps
    assert "dashboard" in re.search(r"-e '\.\[([^\]]*)\]'", SETUP).group(1)
    assert SETUP.count("step ") >= 3


def test_numpy_is_a_dependency_so_torch_does_not_warn_at_import():
    pyproject = (ROOT / "pyproject.toml").read_text()
    dependencies = re.search(r"\ndependencies = \[(.*?)\n\]", pyproject, re.S).group(1)
    assert '"numpy>=' in dependencies
    filters = re.search(r"\nfilterwarnings = \[(.*?)\n\]", pyproject, re.S)
    assert filters is None or "NumPy" not in filters.group(1)  # fixed at the cause, not hidden
    out = subprocess.run(
        [sys.executable, "-W", "error::UserWarning", "-c", "import torch; torch.zeros(1).numpy()"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0 and "Failed to initialize NumPy" not in out.stderr, out.stderr


def test_push_help_keeps_the_readme_promise_of_top3_labels():
    out = subprocess.run(
        [sys.executable, "-m", "producer", "push", "--help"], cwd=ROOT, capture_output=True, text=True, timeout=60
    ).stdout
    assert "top-3" in out and "--redis-url" in out  # the global options are accepted after the command too


def test_every_worker_flag_is_in_the_readmes_table():
    from worker.flags import FLAGS

    assert [flag for flag, _, _, _ in FLAGS if f"| `{flag}` |" not in README] == []
