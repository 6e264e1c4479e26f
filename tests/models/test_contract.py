"""The contract of a mixer (models/backbone.py: Mixer), checked for every registered mixer: the built-in ones and
those of installed plugins (load_plugins imports the `harness.plugins` entry points). A new mixer gets these
tests, and those of test_decoding.py and test_segments.py, without being named anywhere; its own test file
checks its equations.
"""

import dataclasses

import pytest
import torch

from harness.plugins import load_plugins
from harness.registry import MIXERS
from models.backbone import LanguageModel, Mixer, ModelConfig

from .checks import assert_every_parameter_gets_a_finite_gradient, perturb_parameters

load_plugins()
D_MODEL, HEADS, HEAD_DIM = 32, 2, 16


def make(name: str, seed: int = 0) -> Mixer:
    cls = MIXERS.get(name)
    torch.manual_seed(seed)
    mixer = cls(D_MODEL, cls.Config.from_size(D_MODEL, HEADS, HEAD_DIM), kernel_impl="torch")
    mixer.init_weights(0.02)
    perturb_parameters(mixer, seed)  # norm weights off 1 and biases off 0, so that none of them is inert
    return mixer


def inputs(B: int = 2, T: int = 12, seed: int = 1) -> torch.Tensor:
    return torch.randn(B, T, D_MODEL, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("name", MIXERS.names())
def test_a_mixer_is_a_registered_module_with_a_frozen_config_from_a_size(name):
    cls = MIXERS.get(name)
    assert issubclass(cls, Mixer)
    config = cls.Config.from_size(D_MODEL, HEADS, HEAD_DIM)
    assert dataclasses.is_dataclass(config) and cls.Config.__dataclass_params__.frozen
    hash(config)  # a cell's config is hashed into its id


@pytest.mark.parametrize("name", MIXERS.names())
def test_a_checkpoints_config_gives_the_mixers_config_back(name, tmp_path):
    # transformers is slow to import: only this test needs it
    from harness.integrations.hf_config import HarnessLMConfig, config_from_model

    config = MIXERS.get(name).Config.from_size(D_MODEL, HEADS, HEAD_DIM)
    model = ModelConfig(vocab_size=10, d_model=D_MODEL, layers=(name,), mixers={name: config})
    config_from_model(model).save_pretrained(tmp_path)  # config.json: the fields as JSON, tuples as lists
    assert HarnessLMConfig.from_pretrained(tmp_path).model_config() == model


@pytest.mark.parametrize("name", MIXERS.names())
def test_output_has_the_input_shape_and_is_finite(name):
    mixer = make(name)
    y = mixer(inputs())
    assert y.shape == (2, 12, D_MODEL) and y.dtype == torch.float32
    assert torch.isfinite(y).all()


@pytest.mark.parametrize("name", MIXERS.names())
def test_a_mixer_is_causal(name):
    mixer = make(name)
    x = inputs()
    changed = x.clone()
    changed[:, 7:] += 1
    with torch.no_grad():
        y, y_changed = mixer(x), mixer(changed)
    torch.testing.assert_close(y_changed[:, :7], y[:, :7], rtol=0, atol=1e-6)
    assert (y_changed[:, 7:] - y[:, 7:]).abs().max() > 1e-4


@pytest.mark.parametrize("name", MIXERS.names())
def test_every_parameter_gets_a_finite_gradient(name):
    assert_every_parameter_gets_a_finite_gradient(make(name), inputs())


@pytest.mark.parametrize("name", MIXERS.names())
def test_the_same_seed_builds_the_same_mixer(name):
    a, b = make(name, seed=3), make(name, seed=3)
    for (key, p), q in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(p, q), key


@pytest.mark.parametrize("name", MIXERS.names())
def test_a_mixer_reports_its_state_size_cache_and_kernel(name):
    mixer = make(name)
    for seq_len in (1, 64, 1024):
        assert isinstance(mixer.state_size(seq_len), int) and mixer.state_size(seq_len) > 0
        assert isinstance(mixer.cache_bytes(seq_len, torch.float32), int)
        assert mixer.cache_bytes(seq_len, torch.float32) > 0
    assert mixer.state_size(1024) >= mixer.state_size(64)
    assert isinstance(mixer.kernel_name("cpu"), str) and mixer.kernel_name("cpu")
    assert mixer.num_params() == sum(p.numel() for p in mixer.parameters())


@pytest.mark.parametrize("name", MIXERS.names())
def test_a_model_of_the_mixer_learns_a_fixed_batch(name):
    torch.manual_seed(0)
    config = MIXERS.get(name).Config.from_size(D_MODEL, HEADS, HEAD_DIM)
    model = LanguageModel(ModelConfig(vocab_size=8, d_model=D_MODEL, layers=(name,), mixers={name: config}))
    ids = torch.randint(8, (4, 16), generator=torch.Generator().manual_seed(2))
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(20):
        loss = torch.nn.functional.cross_entropy(model(ids[:, :-1]).flatten(0, 1), ids[:, 1:].flatten())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.9 * losses[0], losses
