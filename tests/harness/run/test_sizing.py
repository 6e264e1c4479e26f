import pytest

import models.presets  # noqa: F401
from harness.errors import HarnessError
from harness.run.sizing import SizeMatch, match_size, parse_count, size_table
from models.backbone import LanguageModel


def test_parse_count():
    assert parse_count("1M") == 1_000_000 and parse_count("250k") == 250_000
    assert parse_count("1.5e6") == 1_500_000 and parse_count(2000) == 2000
    with pytest.raises(HarnessError, match="expects a count"):
        parse_count("lots")


def test_every_architecture_is_matched_within_the_tolerance():
    target = SizeMatch(params=200_000, tolerance=0.02)
    sized = [match_size(token, "tiny", 64, target) for token in ("kda", "gdn", "mamba2", "mla", "kimi")]
    for item in sized:
        model = LanguageModel(item.config)  # the count is the real model's
        assert abs(model.num_params(non_embedding=True) / 200_000 - 1) <= 0.02, item.token
        assert item.config.layers == tuple(item.config.layers) and len(item.config.layers) == 2
    table = size_table(sized, target, seq_len=256)
    assert "state @ 256" in table and "| mla " in table


def test_total_count_and_an_impossible_tolerance():
    total = match_size("gdn", "tiny", 64, SizeMatch(params=300_000, tolerance=0.03, count="total"))
    assert abs(total.params / 300_000 - 1) <= 0.03
    with pytest.raises(HarnessError, match="cannot size mla"):
        match_size("mla", "tiny", 64, SizeMatch(params=1000, tolerance=0.01))
