"""docs/bring-your-own-model.md, run exactly as written: its bash blocks, in order, in a fresh
clone of this repository, with nothing of the test process's environment but the venv on PATH.
A multiclass and a regression model go from a data file to a promoted, served model, and the
clone's root params.yaml is never edited."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
from pathlib import Path

from tests.helpers import ROOT

PAGE = ROOT / "docs" / "bring-your-own-model.md"


def bash_blocks(text: str) -> list[str]:
    return re.findall(r"^```bash\n(.*?)^```$", text, flags=re.S | re.M)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_the_quickstart_page_runs_as_written(tmp_path):
    clone = tmp_path / "ctflows"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True)
    subprocess.run(["git", "checkout", "-q", "--detach"], cwd=clone, check=True)
    for tracked in ("ctflows", "tasks", "deployments", "flows", "docs", "params.yaml"):
        # the code under test, committed or not (the clone has its own history)
        subprocess.run(["rm", "-rf", str(clone / tracked)], check=True)
        subprocess.run(["cp", "-r", str(ROOT / tracked), str(clone / tracked)], check=True)
    root_params = (clone / "params.yaml").read_bytes()
    shim = tmp_path / "bin"
    shim.mkdir()
    (shim / "ctflows").write_text(f'#!/bin/sh\nexec "{sys.executable}" -m ctflows "$@"\n')
    (shim / "ctflows").chmod(0o755)
    (shim / "python").write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
    (shim / "python").chmod(0o755)
    env = {
        "PATH": f"{shim}:{Path(sys.executable).parent}:/usr/bin:/bin",
        "HOME": str(tmp_path / "home"),
        "PYTHONPATH": str(clone),
        "PORT": str(free_port()),
        "LANG": "C.UTF-8",
    }
    outputs = []
    for block in bash_blocks(PAGE.read_text()):
        done = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", block],
            cwd=clone,
            env=env,
            capture_output=True,
            text=True,
            timeout=1200,
            check=False,
        )
        assert done.returncode == 0, (
            f"{block}\n--- stdout\n{done.stdout}\n--- stderr\n{done.stderr}"
        )
        outputs.append(done.stdout)
    _, init, runs, served = outputs
    assert "task multiclass" in init and "task regression" in init
    assert "kept the project's model 'churn-classifier'" in init
    assert all(name in init for name in ("churn-classifier", "diabetes", "wine"))  # models
    assert runs.count("promoted") >= 2 and "model=wine v1" in runs and "model=diabetes v1" in runs
    answer = json.loads(served.strip().splitlines()[-1])
    assert set(answer["classes"]) <= {"barolo", "grignolino", "barbera"}
    assert len(answer["scores"]) == 3
    assert (clone / "params.yaml").read_bytes() == root_params
    assert subprocess.run(
        ["git", "diff", "--quiet", "HEAD", "--", "params.yaml"], cwd=clone
    ).returncode in (0, 1)
