"""Decoding with the model's cache: a prompt then one token at a time gives the logits of one forward over the
whole sequence, a left-padded row gives what the row gives alone, and the cache holds what cache_bytes says."""

import pytest
import torch

from models.backbone import LanguageModel
from models.presets import build_model_config

from .checks import decoding_models

VOCAB = 20


@pytest.mark.parametrize("arch", decoding_models())
def test_prefill_then_steps_equal_one_forward_also_left_padded(arch):
    torch.manual_seed(0)
    model = LanguageModel(build_model_config(arch, "tiny", vocab_size=VOCAB)).eval()
    ids = torch.randint(VOCAB, (3, 11), generator=torch.Generator().manual_seed(1))
    mask = torch.ones(3, 11, dtype=torch.long)
    mask[1, :3] = 0
    mask[2, :5] = 0
    with torch.no_grad():
        whole = model(ids, attention_mask=mask)
        alone = model(ids[2:, 5:])
        cache = model.new_cache()
        logits = [model(ids[:, :6], cache=cache, attention_mask=mask[:, :6])]
        for t in range(6, 11):
            logits.append(model(ids[:, t : t + 1], cache=cache, attention_mask=mask[:, : t + 1]))
    stepped = torch.cat(logits, dim=1)
    real = mask.bool()
    torch.testing.assert_close(stepped[real], whole[real], rtol=0, atol=1e-5)
    # pads change nothing: the padded row's real tokens see what they see without the pads
    torch.testing.assert_close(whole[2:, 5:], alone, rtol=0, atol=1e-5)
    assert torch.isfinite(whole).all()
    assert cache.seen_tokens == 11
    # what the cache holds is what the model reports, per sequence
    assert cache.nbytes() == 3 * model.cache_bytes(11, torch.float32)


def test_training_path_is_unchanged_by_an_all_ones_mask():
    torch.manual_seed(0)
    model = LanguageModel(build_model_config("kimi", "tiny", vocab_size=VOCAB)).eval()
    ids = torch.randint(VOCAB, (2, 9), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        torch.testing.assert_close(
            model(ids, attention_mask=torch.ones_like(ids)), model(ids), rtol=0, atol=1e-6
        )


def test_cache_bytes_grow_only_with_attention_layers():
    model = LanguageModel(build_model_config("kimi", "tiny", vocab_size=VOCAB))
    mla = model.config.mixers["mla"]
    per_token = (mla.kv_lora_rank + mla.qk_rope_head_dim) * 2  # bf16 latent
    assert model.cache_bytes(300, torch.bfloat16) - model.cache_bytes(100, torch.bfloat16) == 200 * per_token
    recurrent = LanguageModel(build_model_config("gdn", "tiny", vocab_size=VOCAB))
    assert recurrent.cache_bytes(10) == recurrent.cache_bytes(10_000)
