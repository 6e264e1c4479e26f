"""The backbone in transformers: a checkpoint (safetensors + config + tokenizer) loads with the Auto classes after
`import harness`, and generate() with the model's cache gives the greedy tokens of recomputing every step."""

import dataclasses

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

import harness.integrations.hf_model  # noqa: F401  (registers harness_lm)
from harness.integrations.hf_model import HarnessForCausalLM
from models.backbone import LanguageModel
from models.presets import build_model_config
from tasks.base import word_level_tokenizer as build_tokenizer
from tests.models.checks import decoding_models

VOCAB = 20
EOS, PAD = VOCAB, VOCAB + 1


def hf_model(arch: str) -> HarnessForCausalLM:
    torch.manual_seed(0)
    model = LanguageModel(build_model_config(arch, "tiny", vocab_size=VOCAB))
    with torch.no_grad():
        # sharpen the logits, so that greedy choices are far from ties and float noise cannot flip one
        model.lm_head.weight.mul_(50)
    return HarnessForCausalLM.from_language_model(
        model, added_tokens=2, eos_token_id=EOS, pad_token_id=PAD
    ).eval()


def count_tokens(model: HarnessForCausalLM) -> list[int]:
    seen = []
    model.model.embed.register_forward_hook(lambda module, args, out: seen.append(args[0].numel()))
    return seen


@pytest.mark.parametrize("arch", decoding_models())  # every mixer, plugins' too
def test_cached_generation_equals_recomputing_every_step_on_a_left_padded_batch(arch):
    model = hf_model(arch)
    prompts = torch.randint(VOCAB, (3, 7), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(prompts)
    prompts[1, :2], mask[1, :2] = PAD, 0
    prompts[2, :4], mask[2, :4] = PAD, 0
    seen = count_tokens(model)
    new = 6
    kwargs = dict(attention_mask=mask, max_new_tokens=new, min_new_tokens=new, do_sample=False)
    cached = model.generate(prompts, use_cache=True, **kwargs)
    cached_tokens = sum(seen)
    seen.clear()
    recomputed = model.generate(prompts, use_cache=False, **kwargs)
    assert torch.equal(cached, recomputed)
    assert cached.shape == (3, 7 + new)
    # the cache is really used: the prompt once, then one token per step and row
    assert cached_tokens == 3 * 7 + 3 * (new - 1)
    assert sum(seen) == sum(3 * (7 + i) for i in range(new))
    # a left-padded row generates what it generates alone
    alone = model.generate(prompts[2:, 4:], max_new_tokens=new, min_new_tokens=new, do_sample=False)
    assert torch.equal(alone[0, 3:], cached[2, 7:])
    # added tokens (EOS, pad) are never predicted: they were never trained
    assert not torch.isin(cached[:, 7:], torch.tensor([EOS, PAD])).any()


@pytest.mark.parametrize("arch", ["kda", "mamba2", "mla", "kimi"])
def test_the_static_cache_generates_what_recomputing_gives(arch):
    """generate(static_cache=True): the fast path's preallocated buffers (eager here; a CUDA graph on a GPU)."""
    model = hf_model(arch)
    prompts = torch.randint(VOCAB, (3, 7), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(prompts)
    prompts[1, :2], mask[1, :2] = PAD, 0
    kwargs = dict(attention_mask=mask, max_new_tokens=6, min_new_tokens=6, do_sample=False)
    caches = []
    model.model.register_forward_pre_hook(
        lambda module, args, kw: caches.append(type(kw.get("cache")).__name__), with_kwargs=True
    )
    fast = model.generate(prompts, static_cache=True, **kwargs)
    assert set(caches) == {"StaticCache"}
    assert torch.equal(fast, model.generate(prompts, use_cache=False, **kwargs))
    # on the CPU generate() keeps the dynamic cache unless asked
    caches.clear()
    assert torch.equal(fast, model.generate(prompts, **kwargs))
    assert set(caches) == {"ModelCache"}


def test_checkpoint_loads_with_the_auto_classes(tmp_path):
    model = hf_model("kimi")
    words = [f"w{i}" for i in range(VOCAB)]
    model.save_pretrained(tmp_path)
    build_tokenizer(words).save_pretrained(tmp_path)
    # safetensors, JSON and the two modules trust_remote_code loads (which import the harness): no pickle
    assert {p.suffix for p in tmp_path.iterdir()} <= {".safetensors", ".json", ".py"}
    assert {p.name for p in tmp_path.glob("*.py")} == {"configuration_harness.py", "modeling_harness.py"}
    config = AutoConfig.from_pretrained(tmp_path)
    assert config.model_type == "harness_lm" and config.model_config().layers == ("kda", "mla")
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path)
    assert type(loaded) is HarnessForCausalLM
    for (name, p), q in zip(model.state_dict().items(), loaded.state_dict().values(), strict=True):
        assert torch.equal(p, q), name
    tokenizer = AutoTokenizer.from_pretrained(tmp_path)
    assert tokenizer("w3 w0 w19")["input_ids"] == [3, 0, 19]
    assert (
        (tokenizer.eos_token_id, tokenizer.pad_token_id)
        == (EOS, PAD)
        == (config.eos_token_id, config.pad_token_id)
    )
    assert config.vocab_size == VOCAB + 2 and config.trained_vocab_size == VOCAB
    ids = torch.tensor([[3, 0, 19, 5]])
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).logits, model(ids).logits)


def test_model_type_does_not_clash_with_transformers_own():
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES

    assert "harness_lm" not in CONFIG_MAPPING_NAMES
    assert {"mamba2", "kimi_linear", "qwen3_next"} & set(
        CONFIG_MAPPING_NAMES
    )  # the names we avoid exist there


def test_cache_bytes_per_sequence():
    model = hf_model("mla")
    assert model.cache_bytes(64) == model.model.cache_bytes(64, torch.float32)
    assert model.cache_bytes(64, torch.bfloat16) * 2 == model.cache_bytes(64, torch.float32)


def test_the_word_level_tokenizer_decodes_every_word_with_its_space(tmp_path):
    from harness.plugins import load_plugins
    from harness.registry import SUITES, TASKS

    load_plugins()
    configs = {}
    for suite in ("smoke", "recall", "localization", "reasoning"):
        for name, config in SUITES.get(suite).at("tiny", suite).tasks:
            configs[name] = config  # every synthetic task once
    for name, config in configs.items():
        task = TASKS.get(name)()
        task.tokenizer(config).save_pretrained(tmp_path / name)
        tokenizer = AutoTokenizer.from_pretrained(tmp_path / name)  # as a checkpoint's, from its files
        (piece,) = task.generate(dataclasses.replace(config, num_test=1), "test", seed=0)[:1]
        text = task.render(config, piece.inputs[0])
        ids = tokenizer(text)["input_ids"]
        assert ids == piece.inputs[0].tolist(), name
        # each word decodes with the space before it: a continuation joins its prompt as text does
        assert tokenizer.decode(ids) == " " + text, name
        assert tokenizer.decode(ids[5:]) == " " + " ".join(text.split()[5:]), name
        assert tokenizer(tokenizer.decode(ids))["input_ids"] == ids, name
        # punctuation words keep their spaces, and EOS / pad are dropped as special tokens
        assert tokenizer.decode(
            [*ids, tokenizer.eos_token_id, tokenizer.pad_token_id], skip_special_tokens=True
        ) == (" " + text)
