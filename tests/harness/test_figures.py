import pandas as pd

from harness.figures import accuracy_vs_length, best_over_lr, slice_value


def rows():
    records = []
    for model, base in (("kda", 0.9), ("mla", 0.6)):
        for seq_len in (256, 512, 1024):
            for lr, shift in ((1e-3, 0.0), (1e-4, -0.3)):
                for seed in (0, 1):
                    value = base - seq_len / 4096 + shift + 0.01 * seed
                    records.append(
                        dict(task="mqar", model=model, slice=f"seq_len={seq_len},pairs=8", lr=lr, seed=seed,
                             metric="accuracy", value=value, status="ok")
                    )  # fmt: skip
    return pd.DataFrame(records)


def test_slice_value():
    assert slice_value("seq_len=512,pairs=8", "seq_len") == 512
    assert slice_value("seq_len=512,pairs=8", "pairs") == 8
    assert slice_value("depth=50", "seq_len") is None


def test_best_lr_is_chosen_per_model_and_slice():
    best = best_over_lr(rows(), "accuracy")
    assert len(best) == 6 and set(best["lr"]) == {1e-3}
    kda_256 = best[(best["model"] == "kda") & (best["slice"] == "seq_len=256,pairs=8")]["value"].item()
    assert abs(kda_256 - (0.9 - 256 / 4096 + 0.005)) < 1e-12  # mean over the two seeds


def test_accuracy_vs_length_writes_a_png(tmp_path):
    path = accuracy_vs_length(rows(), tmp_path / "fig.png")
    assert path.exists() and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert accuracy_vs_length(rows().assign(slice="depth=10"), tmp_path / "none.png") is None
