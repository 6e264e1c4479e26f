"""Plugins from outside the package: the worked example of examples/ installed as a package (its entry point in
the `harness.plugins` group) runs through `harness run` next to a built-in mixer, passes the contract tests of
tests/models and its own, and its checkpoints load; a module named with `--plugin` runs in the pool's worker processes.

The example is installed with pip into a folder of its own (no network, no build isolation: setuptools of this
environment builds it) that the subprocesses find on PYTHONPATH, so this environment is left as it was.
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "harness-mixer-example"
FAST = [
    "--set", "train.max_steps=12", "--set", "train.eval_every=6", "--set", "train.batch_size=16",
    "--set", "task.num_train=320", "--set", "task.num_test=32", "--lrs", "3e-3",
]  # fmt: skip

# A plugin that is a plain module, not an installed package: a causal shift mixer (each token sees the one
# before it), which takes no decoding state (a mixer can be trained before it can decode).
SHIFT_PLUGIN = """
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from harness.registry import MIXERS
from models.backbone import Mixer


@dataclass(frozen=True)
class ShiftConfig:
    @classmethod
    def from_size(cls, d_model, num_heads, head_dim):
        return cls()


@MIXERS.register("shift")
class Shift(Mixer):
    Config = ShiftConfig

    def __init__(self, d_model, config, kernel_impl="auto"):
        super().__init__()
        self.proj = nn.Linear(2 * d_model, d_model, bias=False)

    def forward(self, x):
        previous = F.pad(x, (0, 0, 1, 0))[:, :-1]  # x_{t-1}, zeros before the first token
        return self.proj(torch.cat([x, previous], dim=-1))

    def state_size(self, seq_len):
        return 1

    def cache_bytes(self, seq_len, dtype):
        return dtype.itemsize

    def kernel_name(self, device):
        return "shift"
"""


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    """The example plugin installed into a folder of its own."""
    tmp = tmp_path_factory.mktemp("plugin")
    source = shutil.copytree(
        EXAMPLE, tmp / "source"
    )  # pip builds in the source folder: keep the checkout clean
    command = [
        sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation", "--no-index",
        "--target", str(tmp / "site"), str(source),
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    return tmp / "site"


def env_with(*paths: Path) -> dict[str, str]:
    """This environment, with this checkout and `paths` in front of PYTHONPATH."""
    existing = [os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else []
    return dict(
        os.environ,
        PYTHONPATH=os.pathsep.join([str(ROOT), *map(str, paths), *existing]),
        HF_HUB_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
    )


def run(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, env=env, cwd=cwd, stdin=subprocess.DEVNULL
    )


def test_an_installed_plugin_mixer_runs_next_to_a_built_in_one(site, tmp_path):
    env = env_with(site)
    listed = run(["-m", "harness.cli", "list"], env, tmp_path)
    assert listed.returncode == 0 and "  retention " in listed.stdout, listed.stderr
    out = tmp_path / "runs"
    result = run(
        ["-m", "harness.cli", "run", "--models", "retention,mla", "--suite", "smoke", "--out", str(out),
         "--save-checkpoints", *FAST],
        env, tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "| retention@tiny " in result.stdout and "| mla@tiny " in result.stdout
    rows = pd.concat(pd.read_json(path, lines=True) for path in (out / "cells").glob("*.jsonl"))
    assert set(rows["status"]) == {"ok"} and set(rows["model"]) == {"retention", "mla"}
    assert set(rows[rows["model"] == "retention"]["kernel_impl"]) == {"gdr:torch"}
    # its checkpoint names the plugin module, and loads where the plugin is installed
    (checkpoint,) = [
        path for path in (out / "checkpoints").iterdir() if "retention" in (path / "config.json").read_text()
    ]
    assert json.loads((checkpoint / "config.json").read_text())["plugins"] == [
        "harness_mixer_example.retention"
    ]
    code = (
        "import sys; from transformers import AutoModelForCausalLM; "
        "model = AutoModelForCausalLM.from_pretrained(sys.argv[1], trust_remote_code=True); "
        "print(model.config.model_config().layers)"
    )
    loaded = run(
        ["-c", code, str(checkpoint)], dict(env, HF_MODULES_CACHE=str(tmp_path / "modules")), tmp_path
    )
    assert loaded.returncode == 0, loaded.stderr[-3000:]
    assert "('retention', 'retention')" in loaded.stdout


def test_the_contract_tests_and_the_plugins_own_tests_run_over_the_installed_plugin(site, tmp_path):
    tests = [
        "tests/models/test_contract.py",
        "tests/models/test_decoding.py",
        "tests/models/test_segments.py",
    ]
    command = [
        "-m",
        "pytest",
        "-q",
        "-p",
        "no:cacheprovider",
        *tests,
        str(EXAMPLE / "tests"),
        "-k",
        "retention",
    ]
    result = run(command, env_with(site), ROOT)
    assert result.returncode == 0, result.stdout[-3000:]
    passed = int(result.stdout.strip().splitlines()[-1].split(" passed")[0].split()[-1])
    assert passed >= 13, result.stdout[-1000:]  # 8 contract tests, decoding, segments and the example's 3


def test_a_plugin_module_named_with_plugin_runs_in_a_pool_worker(tmp_path):
    (tmp_path / "shift_plugin.py").write_text(SHIFT_PLUGIN)
    out = tmp_path / "runs"
    result = run(
        ["-m", "harness.cli", "--plugin", "shift_plugin", "run", "--models", "shift", "--suite", "smoke",
         "--out", str(out), "--launcher", "pool", "--workers", "1", *FAST],
        dict(env_with(tmp_path), OMP_NUM_THREADS="1"), tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    rows = pd.concat(pd.read_json(path, lines=True) for path in (out / "cells").glob("*.jsonl"))
    assert set(rows["status"]) == {"ok"}, rows["error"].dropna().tolist()
    assert set(rows["kernel_impl"]) == {"shift"}
    assert "step/s" not in result.stderr  # workers print no progress bars, only the sweep's line per cell
    # without --plugin the name is unknown: one line, exit 2
    unknown = run(["-m", "harness.cli", "run", "--models", "shift", "--suite", "smoke"], env_with(), tmp_path)
    assert unknown.returncode == 2 and "unknown model 'shift'" in unknown.stderr
