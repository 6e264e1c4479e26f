"""The tiny `lm` suite end to end, as CI runs it: five architectures pretrained on the standard library's source,
each must end well below the loss of a model that ignores context (the corpus's unigram cross-entropy)."""

import json

import numpy as np
import pytest

from harness.results.store import ResultStore
from harness.run.data import task_data
from harness.run.launchers import LaunchOptions, make_launcher
from harness.run.sweep import plan_cells, run_cells
from tasks.lm import LanguageModelling

MODELS = ["kda", "gdn", "mamba2", "mla", "kimi"]
# nats below the unigram cross-entropy that every model must reach on held-out text after the tiny budget
# (measured at 200 steps: 1.5-2.1 nats below it, see the README's table)
MARGIN = 1.0


@pytest.fixture(scope="module")
def tiny_lm_store(tmp_path_factory):
    store = ResultStore(tmp_path_factory.mktemp("lm"))
    cells = plan_cells(MODELS, "lm", "tiny", ["train.device=cpu"])
    run_cells(cells, store, launcher=make_launcher("pool", LaunchOptions(workers=2)))
    return store, cells


def test_every_model_ends_well_below_the_unigram_loss(tiny_lm_store):
    store, cells = tiny_lm_store
    rows = store.read()
    assert set(rows["status"]) == {"ok"}, rows[rows["status"] != "ok"][["model", "error"]]
    task = LanguageModelling()
    (valid,) = task_data("lm", cells[0].task, "valid", 0)
    unigram_valid = task.unigram_loss(cells[0].task, valid)
    for cell in cells:
        meta = json.loads((store.cells / f"{cell.id}.json").read_text())
        final_valid = meta["history"][-1]["valid_loss"]
        assert final_valid < unigram_valid - MARGIN, (cell.model_name, final_valid, unigram_valid)
        mine = rows[rows["run_id"] == cell.id].set_index(["slice", "metric"])["value"]
        for length in (128, 256, 512):
            loss, unigram = mine[(f"seq_len={length}", "loss")], mine[(f"seq_len={length}", "unigram_loss")]
            assert loss < unigram - MARGIN, (cell.model_name, length, loss, unigram)
            assert np.isclose(mine[(f"seq_len={length}", "perplexity")], np.exp(loss))


def test_rows_hold_position_losses_throughput_and_lm_eval_scores(tiny_lm_store):
    store, cells = tiny_lm_store
    rows = store.read()
    for cell in cells:
        mine = rows[rows["run_id"] == cell.id]
        assert (
            mine.loc[mine["metric"] == "loss_by_position", "slice"].str.startswith("seq_len=512,positions=")
        ).sum() == 16
        assert mine.loc[mine["metric"] == "tokens_per_s", "value"].item() > 0
        bpb = mine[(mine["task"] == "harness_lm") & (mine["metric"] == "bits_per_byte")]
        assert len(bpb) == 1 and 0 < bpb["value"].item() < 8
        assert mine["kernel_impl"].dropna().iloc[0] in ("gdr:torch", "sdpa", "gdr:torch+sdpa")
