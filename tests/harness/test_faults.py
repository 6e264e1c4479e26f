"""The catalogue of issue #14: bad input and faults, each driven through the `harness` command line as a careful
user would, each asserting the exit code, that stderr is one line (or empty), and that the store is unchanged or
repaired.

Every case talks to the CLI and inspects files only, so the same module also counts the catalogue against an
older checkout: `HARNESS_CATALOGUE_AGAINST=/path/to/checkout pytest tests/harness/test_faults.py` runs that
checkout's `python -m harness.cli` in subprocesses (PYTHONPATH=that checkout) instead of this one in process.
Faults of the machine (a full disk, a folder that refuses writes, a killed worker) are injected with the source
of a `sitecustomize` module: run in this process for the length of the call, or imported at start-up by every
process of a subprocess (pool workers included) where the fault must kill a process.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import pickle
import shutil
import subprocess
import sys
import tempfile
import textwrap
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
AGAINST = os.environ.get("HARNESS_CATALOGUE_AGAINST")
"""A checkout whose CLI the cases drive (in subprocesses) instead of this one."""

FAST = [
    "--set", "train.max_steps=8", "--set", "train.eval_every=4", "--set", "train.batch_size=8",
    "--set", "train.warmup_steps=2", "--set", "train.target_accuracy=none",
    "--set", "task.num_train=64", "--set", "task.num_test=8", "--lrs", "3e-3",
]  # fmt: skip
CELL = ["run", "--models", "mla", "--suite", "smoke", *FAST]
"""One tiny cell: 6 rows (2 slices x 3 metrics)."""


@dataclass
class Result:
    code: int
    out: str
    err: str

    def one_line(self, *needles: str) -> None:
        """stderr is exactly one line, holding every needle."""
        lines = self.err.splitlines()
        assert len(lines) == 1, f"exit {self.code}, stderr:\n{self.err[-3000:]}"
        for needle in needles:
            assert needle in lines[0], lines[0]

    def quiet(self) -> None:
        assert self.err == "", f"exit {self.code}, stderr:\n{self.err[-3000:]}"


def harness(*args: str | Path, site: str | None = None, own_process: bool = False) -> Result:
    """Run `harness ARGS`, in this process unless another checkout is tested or `own_process`. `site`: the source
    of a sitecustomize module that injects a fault."""
    args = [str(a) for a in args]
    if AGAINST is None and not own_process:
        with _injected(site):
            return _in_process(args)
    with tempfile.TemporaryDirectory(prefix="harness-faults-") as scratch:
        path = [AGAINST or str(REPO)]
        if site is not None:
            Path(scratch, "sitecustomize.py").write_text(textwrap.dedent(site))
            path.insert(0, scratch)
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(path))
        done = subprocess.run(
            [sys.executable, "-m", "harness.cli", *args], capture_output=True, text=True, env=env, cwd=scratch
        )
    return Result(done.returncode, done.stdout, done.stderr)


@contextlib.contextmanager
def _injected(site: str | None):
    """Run `site` in this process for the length of the block; what it may patch (os, builtins, AdamW.step) is
    put back after."""
    if site is None:
        yield
        return
    import builtins

    import torch

    saved = [(module, dict(vars(module))) for module in (os, builtins)]
    step = torch.optim.AdamW.step
    exec(textwrap.dedent(site), {"__name__": "sitecustomize"})
    try:
        yield
    finally:
        for module, attributes in saved:
            vars(module).update(attributes)
        torch.optim.AdamW.step = step


def _in_process(args: list[str]) -> Result:
    from harness.cli import main

    out, err = io.StringIO(), io.StringIO()
    code = 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main(args)
        except SystemExit as exit_:
            code = exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
    return Result(code, out.getvalue(), err.getvalue())


@pytest.fixture(scope="module", autouse=True)
def quiet_and_single_threaded():
    """No progress bars (they write to stderr) and one thread, in this process and in subprocesses."""
    with pytest.MonkeyPatch.context() as patch:
        for name, value in dict(
            TQDM_DISABLE="1", OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1"
        ).items():
            patch.setenv(name, value)
        if AGAINST is not None:
            yield
            return
        import torch
        from tqdm.auto import tqdm

        import harness.run.train

        patch.setattr(harness.run.train, "tqdm", partial(tqdm, disable=True))
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        yield
        torch.set_num_threads(threads)


def files(folder: Path) -> dict[str, bytes]:
    """Every file under `folder` (relative path -> bytes), for 'the store is unchanged'."""
    if not folder.exists():
        return {}
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def comparable(cell_rows: list[dict]) -> list:
    """Rows less what differs between two runs of one cell (timing)."""
    return sorted(
        json.dumps({k: v for k, v in r.items() if k != "wall_s"}, sort_keys=True) for r in cell_rows
    )


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """A store holding the one tiny cell, run without faults."""
    out = tmp_path_factory.mktemp("reference") / "runs"
    result = harness(*CELL, "--out", out)
    assert result.code == 0, result.err[-3000:]
    assert len(list((out / "cells").glob("*.jsonl"))) == 1
    return out


def cell_id(store: Path) -> str:
    (path,) = (store / "cells").glob("*.jsonl")
    return path.stem


def copy_store(reference: Path, tmp_path: Path) -> Path:
    out = tmp_path / "runs"
    shutil.copytree(reference, out)
    shutil.rmtree(out / "report", ignore_errors=True)
    return out


# ---- 1. Settings that must be refused when the sweep is planned: one line, exit 2, nothing written.

PLANNING = {
    "lr-nan": (["--set", "train.lr=nan"], "train.lr"),
    "lr-negative": (["--set", "train.lr=-1"], "train.lr"),
    "lr-inf": (["--set", "train.lr=inf"], "train.lr"),
    "device-cuda-without-cuda": (["--set", "train.device=cuda"], "cuda"),
    "device-tpu": (["--device", "tpu"], "tpu"),
    "kernel-impl-typo": (["--set", "model.kernel_impl=trition"], "reference"),
    "batch-size-0": (["--set", "train.batch_size=0"], "train.batch_size"),
    "eval-every-0": (["--set", "train.eval_every=0"], "train.eval_every"),
    "num-heads-0": (["--models", "kda", "--set", "model.kda.num_heads=0"], "num_heads"),
    "d-model-negative": (["--set", "model.d_model=-8"], "d_model"),
    "num-train-0": (["--set", "task.num_train=0"], "num_train"),
    "batch-size-1e8": (["--set", "train.batch_size=100000000"], "--force"),
    "seq-len-1e7": (
        ["--set", "task.train_settings=10000000,2", "--set", "task.test_settings=10000000,2"],
        "--force",
    ),
    "dtype-bfloat16": (["--set", "train.dtype=bfloat16"], "bf16"),
    "max-steps-0": (["--set", "train.max_steps=0"], "train.max_steps"),
    "num-test-0": (["--set", "task.num_test=0"], "num_test"),
    "schedule-typo": (["--set", "train.schedule=cosin"], "wsd"),
    "output-gate-typo": (["--models", "gdn", "--set", "model.gdn.output_gate=swis"], "sigmoid"),
}


@pytest.mark.parametrize("case", list(PLANNING))
def test_planning_refuses(case, tmp_path):
    extra, needle = PLANNING[case]
    if case == "device-cuda-without-cuda":
        import torch

        if torch.cuda.is_available():
            pytest.skip("this machine has CUDA")
    out = tmp_path / "runs"
    models = [] if "--models" in extra else ["--models", "mla"]
    # the case's own settings last, so that they win over FAST
    result = harness("run", *models, "--suite", "smoke", *FAST, *extra, "--out", out)
    assert result.code == 2
    result.one_line(needle)
    assert not out.exists(), "nothing may be written"


@pytest.mark.skipif(AGAINST is not None, reason="patches this process")
def test_lm_eval_scores_without_lm_eval_installed_are_refused_before_training(tmp_path, monkeypatch):
    """lm-eval is an extra (`.[lm]`): the lm suite's scores, or `harness eval`, without it are one line, exit 2."""
    import importlib.util

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "lm_eval" else find_spec(name, *a)
    )
    out = tmp_path / "runs"
    result = harness("run", "--models", "mla", "--suite", "lm", "--out", out)
    assert result.code == 2
    result.one_line("lm-eval", "pip install -e '.[lm]'")
    assert not out.exists(), "nothing may be written"
    scored = harness("eval", "--checkpoint", tmp_path, "--tasks", "harness_lm", "--out", out)
    assert scored.code == 2
    scored.one_line("pip install -e '.[lm]'")
    assert not out.exists()


def test_force_plans_what_the_memory_estimate_refuses(tmp_path):
    out = tmp_path / "runs"
    result = harness(*CELL, "--set", "train.batch_size=100000000", "--force", "--dry-run", "--out", out)
    assert result.code == 0, result.err
    result.quiet()
    assert " todo " in result.out and not out.exists()


# ---- 2. A damaged store: readers name the damaged file in one line; the next run sets it aside and reruns it.


def _cut_rows(cells: Path, cid: str) -> None:
    jsonl = cells / f"{cid}.jsonl"
    jsonl.write_text("".join(jsonl.read_text().splitlines(keepends=True)[:3]))


def _edit_value(cells: Path, cid: str) -> None:
    jsonl = cells / f"{cid}.jsonl"
    lines = rows(jsonl)
    lines[0]["value"] = 1.0 if lines[0]["value"] != 1.0 else 0.0
    jsonl.write_text("".join(json.dumps(r) + "\n" for r in lines))


DAMAGE = {
    "jsonl-cut-at-a-line-boundary": _cut_rows,
    "jsonl-empty": lambda cells, cid: (cells / f"{cid}.jsonl").write_bytes(b""),
    "jsonl-non-object-line": lambda cells, cid: (cells / f"{cid}.jsonl").write_text(
        (cells / f"{cid}.jsonl").read_text() + "[1, 2]\n"
    ),
    "jsonl-half-a-line": lambda cells, cid: (cells / f"{cid}.jsonl").write_text(
        (cells / f"{cid}.jsonl").read_text() + '{"run_id": "x", "val'
    ),
    "json-binary": lambda cells, cid: (cells / f"{cid}.json").write_bytes(bytes(range(256)) * 4),
    "jsonl-checksum-mismatch": _edit_value,
    "jsonl-without-its-json": lambda cells, cid: (cells / f"{cid}.json").unlink(),
}


@pytest.mark.parametrize("case", list(DAMAGE))
def test_a_damaged_cell_is_named_and_rerun(case, reference, tmp_path):
    out = copy_store(reference, tmp_path)
    cid = cell_id(out)
    expected = comparable(rows(reference / "cells" / f"{cid}.jsonl"))
    DAMAGE[case](out / "cells", cid)
    damaged = files(out)

    report = harness("report", "--out", out, "--no-figures")
    assert report.code == 2
    report.one_line(cid)
    status = harness("status", "--out", out)
    assert status.code == 0
    status.one_line(cid)
    assert files(out) == damaged, "readers change nothing"

    dry = harness(*CELL, "--out", out, "--dry-run")
    assert dry.code == 0 and f"{cid}  todo" in dry.out, dry.out + dry.err

    rerun = harness(*CELL, "--out", out)
    assert rerun.code == 0
    rerun.one_line(cid)
    assert comparable(rows(out / "cells" / f"{cid}.jsonl")) == expected
    set_aside = files(out / "cells" / "damaged")
    assert set_aside, "the damaged files are kept under cells/damaged/"
    assert all(name.startswith(cid) for name in set_aside)
    again = harness("status", "--out", out)
    assert again.code == 0
    again.quiet()


def test_a_store_written_before_checksums_reads_complete(tmp_path):
    out = tmp_path / "smoke-cpu"
    shutil.copytree(REPO / "results" / "smoke-cpu", out)
    shutil.rmtree(out / "report")
    before = files(out)
    report = harness("report", "--out", out, "--no-figures")
    assert report.code == 0
    report.quiet()
    assert "| mamba2@tiny " in report.out and "did not finish" not in report.out
    before_report = {k: v for k, v in files(out).items() if not k.startswith("report")}
    assert before_report == before


# ---- 3. Checkpoints, environment failures and result failures.

CHECKPOINTED = [*CELL, "--checkpoint-every", "2"]

DIE_AFTER_FIRST_CHECKPOINT = """
    import os
    _replace = os.replace
    def replace(src, dst, *args, **kwargs):
        _replace(src, dst, *args, **kwargs)
        if ".ckpt" in str(dst):
            os._exit(137)  # killed right after the first checkpoint is in place
    os.replace = replace
"""


@pytest.fixture(scope="module")
def checkpointed(tmp_path_factory) -> Path:
    """A store whose one cell was killed right after its first checkpoint (at step 2)."""
    out = tmp_path_factory.mktemp("checkpointed") / "runs"
    result = harness(*CHECKPOINTED, "--out", out, site=DIE_AFTER_FIRST_CHECKPOINT, own_process=True)
    assert result.code == 137, result.err[-3000:]
    assert _checkpoint(out) is not None and not list((out / "cells").glob("*.jsonl"))
    return out


def _checkpoint(store: Path) -> Path | None:
    found = [p for p in (store / "cells").glob("*.ckpt*") if p.is_file()]
    return found[0] if found else None


class Payload:
    """A pickle that runs a shell command when loaded."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_a_malicious_checkpoint_runs_nothing_and_the_cell_starts_from_scratch(reference, tmp_path):
    out = tmp_path / "runs"
    cells = out / "cells"
    cells.mkdir(parents=True)
    cid = cell_id(reference)
    marker = tmp_path / "pwned"
    # a pickle where checkpoints used to be, and garbage where they are now
    (cells / f"{cid}.ckpt").write_bytes(pickle.dumps(Payload(marker)))
    (cells / f"{cid}.ckpt.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{garbage" * 8)
    result = harness(*CHECKPOINTED, "--out", out)
    assert not marker.exists(), "a checkpoint ran code"
    assert result.code == 0
    result.one_line(f"{cid}.ckpt")
    assert comparable(rows(cells / f"{cid}.jsonl")) == comparable(rows(reference / "cells" / f"{cid}.jsonl"))
    assert _checkpoint(out) is None


@pytest.mark.parametrize("damage", ["truncated", "garbage"])
def test_an_unreadable_checkpoint_restarts_the_cell_from_scratch(damage, checkpointed, reference, tmp_path):
    out = tmp_path / "runs"
    shutil.copytree(checkpointed, out)
    checkpoint = _checkpoint(out)
    data = checkpoint.read_bytes()
    checkpoint.write_bytes(data[: len(data) // 2] if damage == "truncated" else os.urandom(len(data)))
    result = harness(*CHECKPOINTED, "--out", out)
    assert result.code == 0
    result.one_line(checkpoint.name)
    cid = cell_id(reference)
    got = rows(out / "cells" / f"{cid}.jsonl")
    assert {r["status"] for r in got} == {"ok"}
    assert comparable(got) == comparable(rows(reference / "cells" / f"{cid}.jsonl"))
    assert _checkpoint(out) is None


def _no_space(part: str) -> str:
    """sitecustomize source: a full disk for files whose name holds `part` (at fsync, where a full disk shows
    for writes the kernel buffered)."""
    return f"""
        import errno, os
        _fsync = os.fsync
        def fsync(fd):
            if {part!r} in os.readlink(f"/proc/self/fd/{{fd}}"):
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            return _fsync(fd)
        os.fsync = fsync
    """


@pytest.mark.parametrize("where", [".ckpt", ".jsonl"])
def test_a_full_disk_is_one_line_releases_the_lock_and_the_cell_runs_again(where, reference, tmp_path):
    out = tmp_path / "runs"
    full = harness(*CHECKPOINTED, "--out", out, site=_no_space(where))
    assert full.code == 2
    full.one_line("no space left on device writing", where)
    cells = out / "cells"
    assert not list(cells.glob("*.lock")) and not list(cells.glob("*.jsonl")) and not list(cells.glob(".*"))
    again = harness(*CHECKPOINTED, "--out", out)
    assert again.code == 0
    again.quiet()
    cid = cell_id(reference)
    assert comparable(rows(cells / f"{cid}.jsonl")) == comparable(rows(reference / "cells" / f"{cid}.jsonl"))


KILL_THE_FIRST_WORKER = """
    import multiprocessing, os, signal
    import torch
    _step = torch.optim.AdamW.step
    def step(self, *args, **kwargs):
        # the first optimizer step in a pool worker kills that worker, once
        marker = os.environ["HARNESS_TEST_MARKER"]
        if multiprocessing.current_process().name.startswith("harness-worker") and not os.path.exists(marker):
            open(marker, "w").close()
            os.kill(os.getpid(), signal.SIGKILL)
        return _step(self, *args, **kwargs)
    torch.optim.AdamW.step = step
"""


def test_a_killed_worker_is_retried_on_the_next_run(reference, tmp_path, monkeypatch):
    monkeypatch.setenv("HARNESS_TEST_MARKER", str(tmp_path / "killed-once"))
    out = tmp_path / "runs"
    pool = [*CELL, "--launcher", "pool", "--workers", "1", "--out", out]
    first = harness(*pool, site=KILL_THE_FIRST_WORKER, own_process=True)
    assert (tmp_path / "killed-once").exists()
    assert first.code == 1
    first.one_line("1 cell")
    assert not list((out / "cells").glob("*.jsonl")), "a killed worker is no result"
    second = harness(*CELL, "--out", out)  # the next run, in this process
    assert second.code == 0
    second.quiet()
    cid = cell_id(reference)
    assert comparable(rows(out / "cells" / f"{cid}.jsonl")) == comparable(
        rows(reference / "cells" / f"{cid}.jsonl")
    )


FAIL_EVERY_STEP = """
    import torch
    def step(self, *args, **kwargs):
        raise ValueError("injected failure")
    torch.optim.AdamW.step = step
"""


def test_a_failed_cell_exits_1_and_retry_reruns_it_keeping_the_old_rows(reference, tmp_path):
    out = tmp_path / "runs"
    failed = harness(*CELL, "--out", out, site=FAIL_EVERY_STEP)
    assert failed.code == 1
    failed.one_line("1 cell")
    cid = cell_id(reference)
    old = (out / "cells" / f"{cid}.jsonl").read_bytes()
    assert [r["status"] for r in rows(out / "cells" / f"{cid}.jsonl")] == ["failed"]
    skipped = harness(*CELL, "--out", out)
    assert skipped.code == 1, "a failed cell stays a failure until it is retried"
    skipped.one_line("--retry")
    retried = harness(*CELL, "--out", out, "--retry", "failed")
    assert retried.code == 0
    retried.quiet()
    assert comparable(rows(out / "cells" / f"{cid}.jsonl")) == comparable(
        rows(reference / "cells" / f"{cid}.jsonl")
    )
    assert (out / "cells" / "history" / f"{cid}.1.jsonl").read_bytes() == old


# ---- 4. One line, never a traceback, for every user-caused error.


def refuse_writes(folder: Path, code: str) -> str:
    """sitecustomize source: every directory or file created under `folder` fails with errno `code` (a read-only
    folder, EACCES, or an immutable one, EPERM: root ignores the first and tmpfs lacks the second)."""
    return f"""
        import errno, os
        def refuse(original):
            def call(path, *args, **kwargs):
                if os.path.abspath(os.fsdecode(path)).startswith({str(folder)!r}):
                    raise OSError(errno.{code}, os.strerror(errno.{code}), os.fsdecode(path))
                return original(path, *args, **kwargs)
            return call
        os.mkdir = refuse(os.mkdir)
        os.open = refuse(os.open)
    """


def test_a_grid_that_is_a_folder(tmp_path):
    out = tmp_path / "runs"
    result = harness("run", "--grid", tmp_path, "--out", out)
    assert result.code == 2
    result.one_line(str(tmp_path))
    assert not out.exists()


def test_out_naming_a_file(tmp_path):
    out = tmp_path / "runs"
    out.write_text("my notes\n")
    result = harness(*CELL, "--out", out)
    assert result.code == 2
    result.one_line(str(out))
    assert out.read_text() == "my notes\n"


@pytest.mark.parametrize("code", ["EACCES", "EPERM"], ids=["read-only", "immutable"])
def test_out_refusing_writes(code, tmp_path):
    out = tmp_path / "runs"
    out.mkdir()
    result = harness(*CELL, "--out", out, site=refuse_writes(out, code))
    assert result.code == 2
    result.one_line(str(out))
    assert files(out) == {}


def test_export_tasks_out_naming_a_file(tmp_path):
    out = tmp_path / "tasks"
    out.write_text("x")
    result = harness("export-tasks", "--suite", "smoke", "--out", out)
    assert result.code == 2
    result.one_line(str(out))
    assert out.read_text() == "x"


def test_regress_with_an_unknown_metric(tmp_path):
    out = tmp_path / "regress"
    result = harness(
        "regress", "--baseline", REPO / "results" / "smoke-cpu", "--metrics", "acc", "--out", out
    )
    assert result.code == 2
    result.one_line("acc")
    assert not out.exists()


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """A transformers checkpoint of the tiny cell (`--save-checkpoints`)."""
    out = tmp_path_factory.mktemp("saved") / "runs"
    result = harness(*CELL, "--out", out, "--save-checkpoints")
    assert result.code == 0, result.err[-3000:]
    (folder,) = (out / "checkpoints").iterdir()
    return folder


def _truncate(folder: Path) -> str:
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    return "model.safetensors"


def _garbage(name: str):
    def damage(folder: Path) -> str:
        (folder / name).write_bytes(b"\x00\xffnot json")
        return name

    return damage


def _no_tokenizer(folder: Path) -> str:
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        (folder / name).unlink(missing_ok=True)
    return "tokenizer"


EVAL_DAMAGE = {
    "truncated-safetensors": _truncate,
    "garbage-config": _garbage("config.json"),
    "garbage-harness-json": _garbage("harness.json"),
    "no-tokenizer": _no_tokenizer,
}


@pytest.mark.parametrize("case", list(EVAL_DAMAGE))
def test_eval_on_a_damaged_checkpoint(case, checkpoint, tmp_path):
    folder = tmp_path / "checkpoint"
    shutil.copytree(checkpoint, folder)
    needle = EVAL_DAMAGE[case](folder)
    out = tmp_path / "scores"
    result = harness("eval", "--checkpoint", folder, "--tasks", "harness_mqar", "--limit", "2", "--out", out)
    assert result.code == 2
    result.one_line(needle)
    assert files(out) == {}


def test_a_corrupt_sweep_record_is_named_then_repaired(reference, tmp_path):
    out = copy_store(reference, tmp_path)
    (sweep,) = (out / "sweeps").glob("*.json")
    sweep.write_bytes(b"\x00\x01 not a plan")
    status = harness("status", "--out", out)
    assert status.code == 0
    status.one_line(sweep.name)
    rerun = harness(*CELL, "--out", out)
    assert rerun.code == 0, rerun.err
    assert cell_id(out) in json.loads(sweep.read_text())["cells"], "the record is written anew"
    again = harness("status", "--out", out)
    assert again.code == 0
    again.quiet()


def test_report_csvs_are_written_atomically(reference, tmp_path):
    out = copy_store(reference, tmp_path)
    first = harness("report", "--out", out, "--no-figures")
    assert first.code == 0, first.err
    before = files(out / "report")
    # a disk that fills up while the CSVs are written, whichever way they are written
    site = (
        _no_space(".csv")
        + """
        import builtins, errno
        _open = builtins.open
        class Full:
            def __init__(self, handle):
                self.handle = handle
            def write(self, text):
                self.handle.write(text[: len(text) // 2])
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            def __getattr__(self, name):
                return getattr(self.handle, name)
            def __enter__(self):
                return self
            def __exit__(self, *exc):
                self.handle.close()
            def __iter__(self):
                return iter(self.handle)
        def open_(file, mode="r", *args, **kwargs):
            handle = _open(file, mode, *args, **kwargs)
            if isinstance(file, (str, os.PathLike)) and str(file).endswith(".csv") and "w" in mode:
                return Full(handle)
            return handle
        builtins.open = open_
    """
    )
    full = harness("report", "--out", out, "--no-figures", site=site)
    assert full.code == 2
    full.one_line("no space left on device writing", ".csv")
    assert files(out / "report") == before, "the previous report is intact, with no partial file"
