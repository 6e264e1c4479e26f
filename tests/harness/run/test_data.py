import numpy as np

import tasks  # noqa: F401
from harness.run.data import task_data
from tasks.mqar import MQARConfig

CONFIG = MQARConfig(vocab_size=64, train_settings=((32, 4), (64, 8)), test_settings=((64, 8),), num_train=200)


def same(a, b) -> bool:
    return [s.name for s in a] == [s.name for s in b] and all(
        np.array_equal(x.inputs, y.inputs) and np.array_equal(x.labels, y.labels)
        for x, y in zip(a, b, strict=True)
    )


def test_cached_data_equals_generated_data(tmp_path, monkeypatch):
    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path))
    first = task_data("mqar", CONFIG, "train", 0)
    entries = list(tmp_path.iterdir())
    assert len(entries) == 1 and entries[0].name.startswith("mqar-train-")
    second = task_data("mqar", CONFIG, "train", 0)  # read back from disk
    assert same(first, second)
    assert [len(s) for s in second] == [100, 100] and second[1].inputs.shape == (100, 64)
    monkeypatch.setenv("HARNESS_CACHE", "off")
    assert same(task_data("mqar", CONFIG, "train", 0), first)


def test_cache_key_changes_with_seed_split_and_config(tmp_path, monkeypatch):
    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path))
    task_data("mqar", CONFIG, "train", 0)
    task_data("mqar", CONFIG, "train", 1)
    task_data("mqar", CONFIG, "test", 0)
    task_data(
        "mqar", MQARConfig(vocab_size=128, train_settings=((32, 4),), test_settings=((64, 8),)), "train", 0
    )
    assert len(list(tmp_path.iterdir())) == 4
    assert not same(task_data("mqar", CONFIG, "train", 0), task_data("mqar", CONFIG, "train", 1))
