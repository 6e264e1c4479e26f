"""lm-eval end to end: a tiny model trained on a synthetic task is saved, reloaded with AutoModelForCausalLM and
scored by lm-eval's own command line on its exported test slices; the score is the harness's own accuracy on the
same examples, also in a process that never imports the harness (the checkpoint's trust_remote_code modules do).
`harness eval` writes the same numbers as rows of the results store."""

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from transformers import AutoModelForCausalLM, AutoTokenizer

import harness.integrations.hf_model  # noqa: F401  (registers harness_lm)
from harness.integrations.lm_eval_scoring import evaluate_checkpoint
from harness.registry import TASKS
from harness.results.schema import COLUMNS
from harness.results.store import ResultStore
from harness.run.export import export_suite
from harness.run.sweep import plan_cells, run_cells
from tasks.base import word_level_tokenizer as build_tokenizer

TRAIN = [
    "train.max_steps=40", "train.eval_every=40", "train.batch_size=16", "task.num_train=960", "task.num_test=16",
]  # fmt: skip
OFFLINE = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
ROOT = Path(__file__).resolve().parents[3]


def fresh_process_env(tmp_path) -> dict[str, str]:
    """A subprocess that imports this checkout's harness only when the checkpoint's remote code asks for it, and
    keeps transformers' copies of remote code in tmp_path."""
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    return dict(OFFLINE, PYTHONPATH=path, HF_MODULES_CACHE=str(tmp_path / "modules"))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    (cell,) = plan_cells(["mla"], "smoke", overrides=TRAIN, lrs=[3e-3])
    store = ResultStore(out)
    run_cells([cell], store, checkpoints=out / "checkpoints")
    rows = store.read()
    assert set(rows["status"]) == {"ok"}, rows["error"].tolist()
    return out, out / "checkpoints" / cell.id, rows


def harness_accuracy(rows):
    accuracy = rows[rows["metric"] == "accuracy"]
    return {r.slice: (r.value, r.n) for r in accuracy.itertuples()}


def assert_scores_equal_the_harness_accuracy(output_path: Path, rows) -> None:
    """lm-eval's results file under output_path: every slice's acc is the harness's accuracy of the cell."""
    (path,) = output_path.rglob("results*.json")
    scored = json.loads(path.read_text())
    harness_side = harness_accuracy(rows)
    assert len(harness_side) == 2
    slices = [name for name in scored["results"] if name != "harness_mqar"]
    assert len(slices) == 2
    for name in slices:
        slice_name = scored["configs"][name]["metadata"]["slice"]
        value, n = harness_side[slice_name]
        # one document per scored answer token; lm-eval's acc (greedy continuation) is the harness's accuracy
        assert scored["n-samples"][name]["effective"] == n
        assert scored["results"][name]["acc,none"] == pytest.approx(value, abs=1e-9), slice_name
    assert 0 < scored["results"]["harness_mqar"]["acc,none"] <= 1


def test_lm_eval_cli_is_lm_evals_command_with_the_model_type_registered(trained):
    """python -m harness.integrations.lm_eval_cli: lm-eval's own entry point after `import hf_model`, so that a
    checkpoint loads without trust_remote_code (the command itself is run by the next test, as lm_eval)."""
    from lm_eval.__main__ import cli_evaluate

    import harness.integrations.lm_eval_cli as wrapper

    _, checkpoint, _ = trained
    assert wrapper.cli_evaluate is cli_evaluate
    assert type(AutoModelForCausalLM.from_pretrained(checkpoint)).__name__ == "HarnessForCausalLM"


def test_lm_evals_own_command_scores_the_checkpoint_without_importing_the_harness(trained, tmp_path):
    """`python -m lm_eval run` is lm-eval alone: nothing registers harness_lm but the checkpoint's own remote code.
    Its acc of every slice is the harness's accuracy of the cell, document for document."""
    _, checkpoint, rows = trained
    command = [
        sys.executable, "-m", "lm_eval", "run", "--model", "hf",
        "--model_args", f"pretrained={checkpoint},trust_remote_code=True", "--tasks", "harness_mqar",
        "--include_path", str(checkpoint / "lm_eval_tasks"), "--device", "cpu", "--batch_size", "32",
        "--output_path", str(tmp_path / "out"),
    ]  # fmt: skip
    result = subprocess.run(
        command, capture_output=True, text=True, env=fresh_process_env(tmp_path), cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert_scores_equal_the_harness_accuracy(tmp_path / "out", rows)


FRESH_LOAD = """
import json, sys
from transformers import AutoModelForCausalLM, pipeline

checkpoint, prompt = sys.argv[1:]
assert "harness" not in sys.modules
messages = {}
try:
    AutoModelForCausalLM.from_pretrained(checkpoint)  # transformers asks on stdin first, prompt on stdout
except ValueError as err:
    messages["without_trust"] = str(err)
sys.modules["harness"] = None  # as where the harness is not installed
try:
    AutoModelForCausalLM.from_pretrained(checkpoint, trust_remote_code=True)
except ImportError as err:
    messages["without_harness"] = str(err)
del sys.modules["harness"]
model = AutoModelForCausalLM.from_pretrained(checkpoint, trust_remote_code=True)
generator = pipeline("text-generation", model=checkpoint, trust_remote_code=True, device="cpu")
text = generator(prompt, max_new_tokens=3, do_sample=False)[0]["generated_text"]
print("\\n" + json.dumps(dict(messages, model_class=type(model).__module__ + "." + type(model).__name__, text=text)))
"""


def test_a_fresh_process_loads_the_checkpoint_and_generates_with_remote_code(trained, tmp_path):
    _, checkpoint, _ = trained
    doc = json.loads(
        (checkpoint / "lm_eval_tasks" / "harness_mqar__seq_len_64_pairs_2.jsonl").read_text().split("\n")[0]
    )
    prompt = doc["context"]
    command = [sys.executable, "-c", FRESH_LOAD, str(checkpoint), prompt]
    result = subprocess.run(
        command, capture_output=True, text=True, env=fresh_process_env(tmp_path), cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr[-3000:]
    found = json.loads(result.stdout.strip().splitlines()[-1])
    # the model class is the checkpoint's remote code, a subclass of the harness's
    assert found["model_class"].startswith("transformers_modules.") and found["model_class"].endswith(
        "HarnessForCausalLM"
    )
    # errors that say what to do: pass trust_remote_code, or install the harness
    assert "trust_remote_code=True" in found["without_trust"]
    assert "install the harness" in found["without_harness"] and "\n" not in found["without_harness"]
    assert "not supported" not in result.stderr  # the pipeline knows the class
    # the pipeline's greedy continuation is the harness model's, words spaced as in the prompt
    model = AutoModelForCausalLM.from_pretrained(checkpoint).eval()
    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    ids = tokenizer(prompt, return_tensors="pt")["input_ids"]
    greedy = model.generate(ids, max_new_tokens=3, do_sample=False)[0, ids.shape[1] :]
    words = tokenizer.convert_ids_to_tokens(greedy.tolist())
    assert found["text"] == prompt + "".join(" " + word for word in words)


def test_harness_eval_appends_tidy_rows(trained):
    out, checkpoint, train_rows = trained
    store = ResultStore(out)
    run_id, rows = evaluate_checkpoint(checkpoint, ["harness_mqar"], store, batch_size=32)
    frame = store.read()
    mine = frame[frame["run_id"] == run_id]
    assert len(mine) == len(rows) == 3  # the group and its two slices
    assert list(frame.columns[: len(COLUMNS)]) == COLUMNS
    assert set(mine["suite"]) == {"lm-eval"} and set(mine["metric"]) == {"acc"}
    assert set(mine["task_version"]) == {"1"} and set(mine["num_fewshot"]) == {0}
    assert mine["stderr"].notna().all() and (mine["status"] == "ok").all()
    assert set(mine["model"]) == {"mla"} and set(mine["layers"]) == {"mla,mla"}
    assert set(mine["trained_run_id"]) == set(train_rows["run_id"])
    by_slice = {r.slice: r.value for r in mine.itertuples() if isinstance(r.slice, str)}
    assert by_slice == pytest.approx({k: v for k, (v, _) in harness_accuracy(train_rows).items()})
    # evaluating again finds the run in the store
    assert evaluate_checkpoint(checkpoint, ["harness_mqar"], store)[1] == []


def test_checkpoint_tokenizer_reads_the_exported_documents(trained):
    _, checkpoint, _ = trained
    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    lines = (checkpoint / "lm_eval_tasks" / "harness_mqar__seq_len_64_pairs_2.jsonl").read_text().splitlines()
    doc = json.loads(lines[0])
    ids = tokenizer(doc["context"] + " " + doc["target"])["input_ids"]
    assert len(ids) == doc["position"] + 2 and max(ids) < tokenizer.eos_token_id


def test_every_registered_task_exports_under_a_name_of_its_own_with_its_tokenizer(tmp_path):
    exported = {}
    for suite in ("smoke", "recall", "localization", "reasoning", "lm"):
        for group, config in export_suite(suite, "tiny", tmp_path / suite).items():
            assert group not in exported, f"{group} exported twice"  # e.g. smoke's and recall's MQAR differ
            assert group.startswith(f"harness_{suite}_tiny_"), group
            exported[group] = (suite, config)
    tasks = {name.replace("-", "_") for name in TASKS.names()}
    assert {name.split("_tiny_")[1] for name in exported} >= tasks
    for group, (suite, config) in exported.items():
        folder = tmp_path / suite / group
        tokenizer = AutoTokenizer.from_pretrained(folder)  # the export's own tokenizer
        spec = json.loads((folder / f"{group}.yaml").read_text())
        if suite == "lm":  # held-out documents of the corpus, scored as perplexity
            assert spec["output_type"] == "loglikelihood_rolling"
            texts = (folder / spec["dataset_kwargs"]["data_files"]["test"]).read_text().splitlines()
            assert len(texts) == config.lm_eval_documents and all(json.loads(t)["text"] for t in texts)
            assert len(tokenizer) == TASKS.get("lm")().vocab_size(config)
            continue
        task_yaml = json.loads((folder / f"{spec['task'][0]}.yaml").read_text())
        words = TASKS.get(task_yaml["metadata"]["harness_task"])().vocabulary(config)
        # data files are named relative to the export's folder
        data = task_yaml["dataset_kwargs"]["data_files"]["test"]
        assert not Path(data).is_absolute()
        doc = json.loads((folder / data).read_text().splitlines()[0])
        ids = tokenizer(doc["context"] + " " + doc["target"])["input_ids"]
        assert ids == build_tokenizer(words)(doc["context"] + " " + doc["target"])["input_ids"]
        assert len(ids) == doc["position"] + 2, group
        assert max(ids) < len(words)


def test_an_export_moved_elsewhere_still_loads_in_lm_eval(tmp_path, monkeypatch):
    from lm_eval.tasks import TaskManager

    (group,) = export_suite("smoke", "tiny", tmp_path / "first")
    documents = (tmp_path / "first" / group / f"{group}__seq_len_64_pairs_2.jsonl").read_text().splitlines()
    (tmp_path / "first").rename(tmp_path / "moved")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # relative paths must not be read from the working directory
    loaded = TaskManager(include_path=str(tmp_path / "moved")).load([group])
    task = loaded["tasks"][f"{group}__seq_len_64_pairs_2"]
    assert [doc["context"] for doc in task.test_docs()] == [json.loads(line)["context"] for line in documents]


def test_export_names_tell_configs_of_one_task_apart_readably():
    from harness.registry import SUITES
    from harness.run.export import export_names

    kimi = SUITES.get("kimi").at("tiny", "kimi").tasks
    names = export_names("kimi", "tiny", kimi, seed=0)
    assert len(set(names)) == len(names)
    assert "harness_kimi_tiny_mqar_test_settings_128_8" in names
    assert export_names("smoke", "tiny", SUITES.get("smoke").at("tiny", "smoke").tasks, seed=2) == [
        "harness_smoke_tiny_mqar_seed2"
    ]
    # whatever field tells two configs apart names them
    (mqar,) = SUITES.get("smoke").at("tiny", "smoke").tasks
    twins = (mqar, (mqar[0], dataclasses.replace(mqar[1], power_a=0.02)))
    first, second = export_names("smoke", "tiny", twins, seed=0)
    assert first != second and first.startswith("harness_smoke_tiny_mqar_power_a_")
