"""`harness eval`: score a checkpoint with lm-eval in this process and append tidy rows to the results store.

lm-eval runs offline (HF_HUB_OFFLINE and HF_DATASETS_OFFLINE default to 1) with the harness's model type
registered, on its `hf` model. Task names are lm-eval's: standard tasks work wherever their data is in the local
cache; the synthetic tasks come from the checkpoint's `lm_eval_tasks/` folder (see harness/integrations/lm_eval_export.py) and
any `--include-path`. One row per (task, metric, filter), in the store's schema:

    task          lm-eval's task or group name         slice         the harness slice of an exported task
    task_version  the task's metadata version          num_fewshot   lm-eval's n-shot
    metric        lm-eval's metric, with ',<filter>' unless the filter is 'none'
    value, stderr, n (documents scored), higher_is_better
    model, preset, layers, seed, lr, steps, tokens_seen  the trained cell's own columns, from the checkpoint's
                                                        harness.json
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import time
from pathlib import Path
from typing import Any

import safetensors

# registers harness_lm with transformers, so that lm-eval's `hf` model loads the harness's checkpoints
import harness.integrations.hf_model  # noqa: F401
from harness.config import config_hash
from harness.errors import HarnessError
from harness.results.provenance import git_state, library_versions
from harness.results.schema import Row
from harness.results.store import ResultStore


def evaluate_checkpoint(
    checkpoint: str | Path,
    tasks: list[str],
    store: ResultStore | None = None,
    include_paths: list[str | Path] = (),
    num_fewshot: int | None = None,
    limit: int | None = None,
    batch_size: int = 32,
    device: str = "cpu",
) -> tuple[str, list[dict[str, Any]]]:
    """Run lm-eval on `checkpoint` for `tasks`; append the rows to `store` (when given, and not there yet).
    Returns (run id, rows)."""
    if importlib.util.find_spec("lm_eval") is None:
        raise HarnessError("scoring with lm-eval needs the lm-eval package: pip install -e '.[lm]'")
    checkpoint = Path(checkpoint).resolve()
    check_checkpoint(checkpoint)
    provenance = _provenance(checkpoint)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    # slow to import (seconds): only scoring needs it
    import lm_eval
    from lm_eval.tasks import TaskManager

    paths = [str(Path(p).resolve()) for p in include_paths]
    if (checkpoint / "lm_eval_tasks").is_dir():
        paths.append(str(checkpoint / "lm_eval_tasks"))
    run_id = config_hash(
        dict(checkpoint=str(checkpoint), trained=provenance.get("cell_id"), tasks=sorted(tasks),
             num_fewshot=num_fewshot, limit=limit, lm_eval=lm_eval.__version__)
    )  # fmt: skip
    # the checkpoints of one trained configuration (its seeds) scored the same way share a setting
    setting_id = config_hash(
        dict(trained=(provenance.get("row") or {}).get("setting_id") or str(checkpoint), tasks=sorted(tasks),
             num_fewshot=num_fewshot, limit=limit, lm_eval=lm_eval.__version__)
    )  # fmt: skip
    if store is not None and store.has(run_id):
        return run_id, []
    manager = TaskManager(include_path=paths or None)
    unknown = [t for t in tasks if t not in manager.all_tasks]
    if unknown:
        raise HarnessError(
            f"unknown lm-eval task(s) {', '.join(unknown)}; exported synthetic tasks are named like harness_mqar"
        )
    start = time.perf_counter()
    results = lm_eval.simple_evaluate(
        model="hf",
        # safetensors only: a pickled pytorch_model.bin could run code when loaded
        model_args=dict(pretrained=str(checkpoint), backend="causal", dtype="float32", use_safetensors=True),
        tasks=tasks,
        num_fewshot=num_fewshot,
        limit=limit,
        batch_size=batch_size,
        device=device,
        task_manager=manager,
    )
    rows = result_rows(results, run_id, provenance, device, wall_s=time.perf_counter() - start)
    rows = [dict(row, setting_id=setting_id) for row in rows]
    if store is not None:
        store.write(run_id, rows, dict(checkpoint=str(checkpoint), tasks=tasks, lm_eval=lm_eval.__version__))
    return run_id, rows


def result_rows(
    results: dict, run_id: str, provenance: dict, device: str, wall_s: float
) -> list[dict[str, Any]]:
    """lm-eval's results dict as tidy rows of the store's schema (Row dicts)."""
    commit, dirty = git_state()
    trained = provenance.get("row") or {}  # the trained cell's own columns (checkpoints of harness cells)
    base = Row(
        run_id=run_id,
        suite="lm-eval",
        scale=trained.get("scale"),
        seed=trained.get("seed"),
        model=trained.get("model") or provenance.get("name"),
        preset=trained.get("preset"),
        layers=trained.get("layers"),
        params=trained.get("params"),
        non_embedding_params=trained.get("non_embedding_params"),
        lr=trained.get("lr"),
        steps=trained.get("steps"),
        tokens_seen=trained.get("tokens_seen"),
        kernel_impl=trained.get("kernel_impl"),
        dtype="float32",
        device=device,
        git_commit=commit,
        git_dirty=dirty,
        **library_versions(),
        wall_s=round(wall_s, 3),
        checkpoint=provenance.get("checkpoint"),
        trained_run_id=provenance.get("cell_id"),
    )
    rows = []
    for task, measured in results["results"].items():
        config = results.get("configs", {}).get(task, {})
        metadata = config.get("metadata") or {}
        samples = results.get("n-samples", {}).get(task, {})
        higher = results.get("higher_is_better", {}).get(task, {})
        for key, value in measured.items():
            if "," not in key or "_stderr," in key or not isinstance(value, int | float):
                continue
            metric, _, filter_name = key.partition(",")
            stderr = measured.get(f"{metric}_stderr,{filter_name}")
            rows.append(
                base.with_(
                    task=task,
                    task_version=str(results.get("versions", {}).get(task, metadata.get("version"))),
                    num_fewshot=results.get("n-shot", {}).get(task),
                    slice=metadata.get("slice"),
                    metric=metric if filter_name == "none" else f"{metric},{filter_name}",
                    value=float(value),
                    higher_is_better=higher.get(metric),
                    n=samples.get("effective"),
                    stderr=float(stderr)
                    if isinstance(stderr, int | float) and math.isfinite(stderr)
                    else None,
                ).to_dict()
            )
    return rows


def check_checkpoint(checkpoint: Path) -> None:
    """Raise HarnessError, naming the file, if the checkpoint folder cannot be scored: a config that is not JSON,
    weights that are missing, not safetensors or cut short, no tokenizer. Checked before lm-eval starts, which
    would otherwise fail with a long traceback (or, without a tokenizer, claim that sentencepiece is missing)."""
    if not checkpoint.is_dir() or not (checkpoint / "config.json").exists():
        raise HarnessError(f"no transformers checkpoint at {checkpoint} (config.json missing)")
    config = _read_json(checkpoint / "config.json")
    if not isinstance(config, dict) or "model_type" not in config:
        raise HarnessError(f"{checkpoint / 'config.json'} is not a transformers config (no model_type)")
    index = checkpoint / "model.safetensors.index.json"
    if index.exists():  # weights in several files
        listed = _read_json(index)
        if not isinstance(listed, dict) or not isinstance(listed.get("weight_map"), dict):
            raise HarnessError(f"{index} is not a safetensors index (no weight_map)")
        weights = sorted({checkpoint / name for name in listed["weight_map"].values()})
    else:
        weights = [checkpoint / "model.safetensors"]
    for path in weights:
        if not path.exists():
            pickled = [p.name for p in checkpoint.glob("*.bin")]
            also = (
                f" (it has {', '.join(pickled)}: pickle, which harness eval does not load)" if pickled else ""
            )
            raise HarnessError(f"no weights at {path}{also}; save the checkpoint with safetensors")
        try:
            with safetensors.safe_open(str(path), framework="pt") as f:
                f.keys()
        except (OSError, safetensors.SafetensorError) as err:
            raise HarnessError(f"damaged weights file {path} ({err}); save the checkpoint again") from None
    if not any((checkpoint / name).exists() for name in ("tokenizer.json", "tokenizer.model", "vocab.json")):
        raise HarnessError(
            f"no tokenizer in {checkpoint} (tokenizer.json missing); checkpoints saved with `harness run"
            " --save-checkpoints` have one: copy it there"
        )


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_bytes())
    except (OSError, ValueError) as err:  # ValueError: not UTF-8, or not JSON
        raise HarnessError(f"{path} cannot be read as JSON ({type(err).__name__}: {err})") from None


def _provenance(checkpoint: Path) -> dict[str, Any]:
    """What harness.json says about how the checkpoint was trained; for other checkpoints, only its name."""
    path = checkpoint / "harness.json"
    provenance = _read_json(path) if path.exists() else {"name": checkpoint.name}
    if not isinstance(provenance, dict):
        raise HarnessError(f"{path} is not a JSON object; save the checkpoint again")
    provenance["checkpoint"] = str(checkpoint)
    return provenance
