"""The shared backbone and the named presets: all architectures build, hybrids follow the docs."""

import dataclasses

import pytest
import torch

from harness.errors import HarnessError, UnknownName
from harness.plugins import load_plugins
from harness.registry import ARCHITECTURES, MIXERS
from models.backbone import LanguageModel, ModelConfig
from models.gdn import GDNConfig
from models.kda import KDAConfig
from models.mamba2 import Mamba2Config
from models.mla import MLAConfig
from models.presets import build_model_config, parse_architecture

VOCAB = 50
load_plugins()  # the mixers of installed plugins too


def build(token: str, seed: int = 0, **fields) -> LanguageModel:
    torch.manual_seed(seed)
    return LanguageModel(build_model_config(token, "tiny", vocab_size=VOCAB, **fields))


def tokens(B: int, T: int, seed: int = 1) -> torch.Tensor:
    return torch.randint(VOCAB, (B, T), generator=torch.Generator().manual_seed(seed))


def test_the_documented_architectures_are_models():
    assert {"mla", "mla-nope", "kimi", "gdn-h"} <= set(ARCHITECTURES.names())
    # a mixer is a model of its name (one in every layer) without a preset: nothing to add for a new one
    for name in ("kda", "gdn", "mamba2"):
        assert name not in ARCHITECTURES and parse_architecture(name).mixers == (name,)


@pytest.mark.parametrize("size", ["tiny", "kimi-synth"])
@pytest.mark.parametrize("arch", sorted({*ARCHITECTURES.names(), *MIXERS.names()}))
def test_every_architecture_and_mixer_builds_and_runs(arch, size):
    model = build(f"{arch}@{size}")
    architecture = parse_architecture(arch)
    assert set(model.config.layers) == set(architecture.mixers)
    assert [block.mixer_name for block in model.blocks] == list(model.config.layers)
    logits = model(tokens(2, 5))
    assert logits.shape == (2, 5, VOCAB)
    assert torch.isfinite(logits).all()
    assert model.state_size(5) > 0


@pytest.mark.parametrize("arch,linear", [("kimi", "kda"), ("gdn-h", "gdn")])
def test_hybrid_layer_pattern(arch, linear):
    architecture = ARCHITECTURES.get(arch)
    # two layers keep one attention layer, last
    assert architecture.layers(2) == (linear, "mla")
    eight = architecture.layers(8)
    assert [i for i, name in enumerate(eight) if name == "mla"] == [3, 7]
    assert all(name == linear for i, name in enumerate(eight) if i not in (3, 7))
    assert build(arch).config.layers == (linear, "mla")


def test_kimi_attention_is_nope_without_query_compression():
    mla = build("kimi").config.mixers["mla"]
    assert isinstance(mla, MLAConfig)
    assert mla.qk_rope_head_dim == 0 and mla.q_lora_rank is None


def test_gdn_h_uses_the_sigmoid_output_gate_and_plain_gdn_swish():
    assert build("gdn-h").config.mixers["gdn"].output_gate == "sigmoid"
    assert build("gdn").config.mixers["gdn"].output_gate == "swish"


def test_gdn_sigmoid_is_gdn_with_the_sigmoid_gate_and_nothing_else():
    plain, sigmoid = build("gdn").config, build("gdn-sigmoid").config
    assert sigmoid.layers == plain.layers == ("gdn",) * len(plain.layers)
    assert sigmoid.mixers["gdn"] == dataclasses.replace(plain.mixers["gdn"], output_gate="sigmoid")
    assert dataclasses.replace(sigmoid, mixers=plain.mixers) == plain


def test_ratio_syntax():
    assert parse_architecture("kda:mla=1:1").layers(4) == ("kda", "mla", "kda", "mla")
    assert parse_architecture("kda:mla=3:1").layers(8) == ARCHITECTURES.get("kimi").layers(8)
    assert parse_architecture("mamba2:gdn:mla=2:1:1").layers(4) == ("mamba2", "mamba2", "gdn", "mla")
    model = build("kda:mla=1:1")
    assert model.config.layers == ("kda", "mla")
    assert isinstance(model.config.mixers["kda"], KDAConfig)
    assert model(tokens(1, 4)).shape == (1, 4, VOCAB)


@pytest.mark.parametrize("name", ["kda:mla=1:0", "kda:mla=1:1:1"])
def test_bad_ratio_is_rejected(name):
    with pytest.raises(HarnessError, match="bad hybrid"):
        parse_architecture(name)


@pytest.mark.parametrize(
    "token,suggestion",
    [
        ("kimii", "kimi"),
        ("mamba", "mamba2"),
        ("kda@tinyy", "tiny"),
        ("kda:mlaa=1:1", "mla"),
        ("gdnh", "gdn-h"),
    ],
)
def test_unknown_names_suggest_the_closest(token, suggestion):
    with pytest.raises(UnknownName, match="did you mean") as error:
        build_model_config(token, "tiny", vocab_size=VOCAB)
    assert suggestion in str(error.value).split("did you mean")[1]
    assert str(error.value).startswith("unknown")  # a one-line message, not a quoted KeyError


@pytest.mark.parametrize("block_mlp", [True, False])
def test_mamba2_block_without_mlp(block_mlp):
    config = ModelConfig(
        vocab_size=VOCAB, d_model=32, layers=("mamba2",), mixers={"mamba2": Mamba2Config(block_mlp=block_mlp)}
    )
    torch.manual_seed(0)
    block = LanguageModel(config).blocks[0]
    assert (block.mlp is None) == (not block_mlp)
    assert any(name.startswith("mlp") for name, _ in block.named_parameters()) == block_mlp
    x = torch.randn(1, 6, 32)
    with torch.no_grad():
        y = block(x)
        mixed = x + block.mixer(block.mixer_norm(x))
    # without an MLP the block is only the residual mixer
    assert torch.allclose(y, mixed) == (not block_mlp)


@pytest.mark.parametrize("tie", [False, True])
def test_num_params_without_embeddings(tie):
    model = build("kimi", tie_embeddings=tie)
    embedding = VOCAB * model.config.d_model
    body = sum(p.numel() for p in model.blocks.parameters()) + sum(p.numel() for p in model.norm.parameters())
    assert model.num_params(non_embedding=True) == body
    assert model.num_params() == body + embedding * (1 if tie else 2)
    assert (model.lm_head.weight is model.embed.weight) == tie


def test_deterministic_under_manual_seed():
    a, b, c = build("kimi", seed=3), build("kimi", seed=3), build("kimi", seed=4)
    for (name, p), q in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(p, q), name
    x = tokens(2, 7)
    with torch.no_grad():
        assert torch.equal(a(x), b(x))
        assert not torch.allclose(a(x), c(x))


@pytest.mark.parametrize("arch", ["kimi", "mamba2"])
def test_language_model_is_causal(arch):
    # float32: PyTorch's depthwise convolution in float64 takes a slow path on CPU (seconds per call)
    model = build(arch)
    x = tokens(2, 12)
    changed = x.clone()
    changed[:, 7:] = (x[:, 7:] + 1) % VOCAB
    with torch.no_grad():
        y, y_changed = model(x), model(changed)
    torch.testing.assert_close(y_changed[:, :7], y[:, :7], rtol=0, atol=1e-6)
    assert (y_changed[:, 7:] - y[:, 7:]).abs().max() > 1e-4


def test_state_size_and_kernel_names_sum_over_layers():
    model = build("kimi")
    kda, mla = (block.mixer for block in model.blocks)
    assert model.state_size(100) == kda.state_size(100) + mla.state_size(100)
    # only the attention layer's latent cache grows with the sequence
    assert model.state_size(300) - model.state_size(100) == 200 * model.config.mixers["mla"].kv_lora_rank
    assert model.kernel_names("cpu") == "gdr:torch+sdpa"
    assert build("mla").kernel_names("cpu") == "sdpa"


def test_model_config_checks_its_layers():
    with pytest.raises(ValueError, match="at least one layer"):
        ModelConfig(layers=(), mixers={})
    with pytest.raises(ValueError, match="no config for mixer"):
        ModelConfig(layers=("kda", "gdn"), mixers={"kda": KDAConfig()})
    ModelConfig(layers=("gdn",), mixers={"gdn": GDNConfig()})


def test_pure_mla_baseline_has_rope_and_mla_nope_has_none():
    assert build("mla").config.mixers["mla"].qk_rope_head_dim == 32 // 2  # half the tiny head
    assert build("mla-nope").config.mixers["mla"].qk_rope_head_dim == 0


def test_model_parameters_add_up_over_mixers_mlps_norms_and_embeddings():
    model = build("kimi")
    mixers = sum(block.mixer.num_params() for block in model.blocks)
    rest = sum(p.numel() for name, p in model.named_parameters() if ".mixer." not in name)
    assert mixers > 0 and model.num_params() == mixers + rest
