"""A sweep killed at random moments (SIGKILL, SIGTERM, SIGINT), several times, or killed while it writes a
checkpoint, then resumed, ends with exactly the store an uninterrupted sweep writes: the same rows, no duplicates,
no temporary, lock or checkpoint files."""

import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from harness.results.store import ResultStore
from harness.run.train import training_curve
from tests.harness.run.sweeps import FAST, comparable

# 6 MLA cells of 12 steps (about 1.5 s each, the first 5 s more: torch imports its compiler with AdamW);
# a checkpoint every 3 steps, so that kills land mid-cell after a checkpoint too
SWEEP = [
    "run", "--models", "mla", "--suite", "smoke", "--lrs", "1e-3,3e-3,1e-2", "--seeds", "0,1",
    "--checkpoint-every", "3", *(arg for setting in FAST for arg in ("--set", setting)),
    "--set", "train.max_steps=12", "--set", "train.eval_every=6",
]  # fmt: skip
KILLS = {"inprocess": 4, "pool": 2}


def start(out: Path, launcher: str = "inprocess", site: str | None = None) -> subprocess.Popen:
    """Start the sweep; `site`: the source of a sitecustomize module its processes import at start-up."""
    # one thread per process and no data cache: a fast, deterministic run on a busy machine too
    # HARNESS_TEST_STORE marks this sweep's processes (workers inherit it) for the orphan check
    env = dict(
        os.environ, OMP_NUM_THREADS="1", HARNESS_CACHE="off", TQDM_DISABLE="1", HARNESS_TEST_STORE=str(out)
    )
    if site is not None:
        folder = out.parent / "site"
        folder.mkdir(exist_ok=True)
        (folder / "sitecustomize.py").write_text(textwrap.dedent(site))
        env["PYTHONPATH"] = os.pathsep.join([str(folder), *filter(None, [os.environ.get("PYTHONPATH")])])
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "harness.cli",
            *SWEEP,
            "--out",
            str(out),
            "--launcher",
            launcher,
            "--workers",
            "2",
        ],
        cwd=out.parent,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def store_contents(out: Path) -> dict:
    cells = {}
    for path in sorted((out / "cells").glob("*.jsonl")):
        rows = [json.loads(line) for line in path.read_text().splitlines()]
        meta = json.loads(path.with_suffix(".json").read_text())
        cells[path.stem] = (comparable(rows), training_curve(meta["history"]), len(rows))
    return cells


def leftovers(out: Path) -> list[str]:
    return sorted(
        p.name
        for p in (out / "cells").iterdir()
        if p.name.endswith((".tmp", ".lock", ".ckpt", ".ckpt.safetensors"))
    )


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    out = tmp_path_factory.mktemp("reference") / "runs"
    finished = start(out)
    _, stderr = finished.communicate(timeout=300)
    assert finished.returncode == 0, stderr[-2000:]
    expected = store_contents(out)
    assert len(expected) == 6
    return expected


def kill_while_working(
    out: Path, launcher: str, rng: random.Random, signal_number: int = signal.SIGKILL
) -> tuple[int, int]:
    """Start a sweep and send it `signal_number` at a random moment; returns the numbers of finished and
    checkpointed cells it left. The moment is drawn in terms of progress, not seconds, so that kills land mid-cell (after a
    checkpoint or not) and between cells however fast the machine is: wait until 0 or 1 more cells finished
    and, most of the time, a checkpoint exists, and the sweep holds a lease, then a random fraction of a second
    more."""
    cells = out / "cells"

    def count(pattern: str) -> int:
        return len(list(cells.glob(pattern))) if cells.exists() else 0

    target, want_checkpoint = count("*.jsonl") + rng.randint(0, 1), rng.random() < 0.7
    sweep = start(out, launcher)
    deadline = time.monotonic() + 120
    while sweep.poll() is None and not (
        count("*.jsonl") >= target
        and (count("*.ckpt.safetensors") or not want_checkpoint)
        and ResultStore(out).running()  # a lease held by this sweep, not a lock file a killed one left
    ):
        assert time.monotonic() < deadline, "the sweep made no progress in 120 s"
        time.sleep(0.02)
    time.sleep(rng.uniform(0.0, 0.6))
    sweep.send_signal(signal_number)
    _, stderr = sweep.communicate(timeout=60)
    if signal_number != signal.SIGKILL and sweep.returncode not in (0, 1, 128 + signal_number):
        raise AssertionError(f"exit {sweep.returncode} after signal {signal_number}: {stderr[-2000:]}")
    return count("*.jsonl"), count("*.ckpt.safetensors")


def resume_and_compare(killed: Path, launcher: str, uninterrupted: dict, note: str) -> None:
    last = start(killed, launcher)
    _, stderr = last.communicate(timeout=300)
    assert last.returncode == 0, stderr[-2000:]
    print(note)
    got = store_contents(killed)
    assert set(got) == set(uninterrupted), note
    for cell_id, (rows, history, count) in uninterrupted.items():
        assert got[cell_id][2] == count, f"cell {cell_id}: {got[cell_id][2]} rows, expected {count}; {note}"
        assert got[cell_id][0] == rows, f"cell {cell_id} differs from the uninterrupted run; {note}"
        assert got[cell_id][1] == history, f"cell {cell_id}: training history differs; {note}"
    assert leftovers(killed) == [], note


@pytest.mark.slow
@pytest.mark.parametrize("launcher", ["inprocess", "pool"])
def test_sigkill_at_random_moments_then_resume_equals_an_uninterrupted_run(tmp_path, launcher, uninterrupted):
    seed = int(time.time())
    rng = random.Random(seed)
    killed = tmp_path / "runs"
    progress = [kill_while_working(killed, launcher, rng) for _ in range(KILLS[launcher])]
    note = f"random seed {seed}; (finished, checkpointed) cells after each kill: {progress}"
    resume_and_compare(killed, launcher, uninterrupted, note)
    if launcher == "pool":
        time.sleep(1.5)  # workers of killed sweeps notice their parent is gone within a second
        survivors = _processes_marked(killed)
        assert survivors == [], f"worker processes outlived their sweep: {survivors}"


# SIGKILL the sweep when it is about to make its second checkpoint durable: the new checkpoint is written to a
# temporary file but never renamed into place, so the first one (step 3) is still there
KILL_AT_THE_SECOND_CHECKPOINT = """
    import os, signal
    _fsync, _written = os.fsync, []
    def fsync(fd):
        if ".ckpt.safetensors." in os.readlink(f"/proc/self/fd/{fd}"):
            _written.append(fd)
            if len(_written) == 2:
                os.kill(os.getpid(), signal.SIGKILL)
        return _fsync(fd)
    os.fsync = fsync
"""


@pytest.mark.slow
def test_a_kill_while_a_checkpoint_is_written_then_sigterm_and_sigint_then_resume_equals_an_uninterrupted_run(
    tmp_path, uninterrupted
):
    killed = tmp_path / "runs"
    sweep = start(killed, site=KILL_AT_THE_SECOND_CHECKPOINT)
    _, stderr = sweep.communicate(timeout=300)
    assert sweep.returncode == -signal.SIGKILL, stderr[-2000:]
    cells = killed / "cells"
    half_written = [
        p.name for p in cells.iterdir() if p.name.startswith(".") and ".ckpt.safetensors." in p.name
    ]
    assert half_written and len(list(cells.glob("*.ckpt.safetensors"))) == 1
    # then a scheduler ending the job (SIGTERM) and Ctrl-C (SIGINT): the sweep unwinds, releasing its leases
    seed = int(time.time())
    rng = random.Random(seed)
    progress = [kill_while_working(killed, "inprocess", rng, sig) for sig in (signal.SIGTERM, signal.SIGINT)]
    note = f"killed while writing a checkpoint, then random seed {seed}; after each signal: {progress}"
    resume_and_compare(killed, "inprocess", uninterrupted, note)


def _processes_marked(out: Path) -> list[str]:
    marker = f"HARNESS_TEST_STORE={out}".encode()
    found = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and marker in (proc / "environ").read_bytes().split(b"\0"):
                found.append(proc.name)
        except OSError:
            continue
    return found
