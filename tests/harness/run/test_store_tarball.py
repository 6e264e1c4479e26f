"""A sweep cut off on one machine resumes on another from its store packed into one tarball
(scripts/store_tar.sh), as a GPU sweep longer than one lease does: the resumed store equals an uninterrupted one."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from harness.run.train import training_curve
from tests.harness.run.sweeps import FAST, comparable

ROOT = Path(__file__).resolve().parents[3]
SWEEP = [
    "run", "--models", "mla", "--suite", "smoke", "--lrs", "1e-3,3e-3", "--seeds", "0,1", "--checkpoint-every", "4",
    *(arg for setting in FAST for arg in ("--set", setting)), "--set", "train.max_steps=12",
]  # fmt: skip


def sweep(out: Path) -> subprocess.Popen:
    env = dict(os.environ, OMP_NUM_THREADS="1", HARNESS_CACHE="off", TQDM_DISABLE="1")
    command = [sys.executable, "-m", "harness.cli", *SWEEP, "--out", str(out)]
    return subprocess.Popen(
        command, cwd=out.parent, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def contents(out: Path) -> dict:
    cells = {}
    for path in sorted((out / "cells").glob("*.jsonl")):
        meta = json.loads(path.with_suffix(".json").read_text())
        rows = [json.loads(line) for line in path.read_text().splitlines()]
        cells[path.stem] = (comparable(rows), training_curve(meta["history"]))
    return cells


def store_tar(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", str(ROOT / "scripts" / "store_tar.sh"), *args], capture_output=True, text=True
    )


def test_a_sweep_cut_off_resumes_elsewhere_from_its_tarball(tmp_path):
    reference = tmp_path / "reference" / "runs"
    reference.parent.mkdir()
    done = sweep(reference)
    assert done.wait(timeout=300) == 0, done.stderr.read()[-2000:]
    expected = contents(reference)
    assert len(expected) == 4

    first = tmp_path / "machine1" / "runs"
    first.parent.mkdir()
    cut = sweep(first)
    deadline = time.monotonic() + 240
    while len(list((first / "cells").glob("*.jsonl"))) < 2 and time.monotonic() < deadline:
        time.sleep(0.2)
    cut.kill()  # the lease ends: SIGKILL, mid-cell
    cut.wait()
    packed = store_tar("pack", str(first), str(tmp_path / "carry" / "store.tgz"))
    assert packed.returncode == 0, packed.stderr
    finished_before = len(list((first / "cells").glob("*.jsonl")))
    assert 2 <= finished_before < 4

    second = tmp_path / "machine2" / "runs"
    second.parent.mkdir()
    unpacked = store_tar("unpack", str(tmp_path / "carry" / "store.tgz"), str(second))
    assert unpacked.returncode == 0, unpacked.stderr
    assert not [p for p in (second / "cells").iterdir() if p.name.endswith((".lock", ".tmp", ".safetensors"))]
    resumed = sweep(second)
    stdout, stderr = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, stderr[-2000:]
    assert f"{4 - finished_before} cell(s) run, {finished_before} already" in stdout
    assert contents(second) == expected
