"""The harness's models in transformers, part 1: the config class (model_type `harness_lm`), registered with
AutoConfig on import. The model class (`hf_model.py`) subclasses transformers' PreTrainedModel, whose import takes
several seconds, so it lives in its own module, which registers it with AutoModelForCausalLM:

    import harness.integrations.hf_model  # noqa: F401
    model = AutoModelForCausalLM.from_pretrained(checkpoint_dir)    # no remote code, no pickle

A config names the plugin modules its mixers come from (`plugins`), and importing them is part of reading it, so
that a checkpoint of a mixer from outside the package loads where that package is installed.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from transformers import AutoConfig, PretrainedConfig

from harness.errors import HarnessError
from harness.plugins import load_plugins
from harness.registry import MIXERS
from models.backbone import ModelConfig

# Not transformers' own `mamba2`, `kimi_linear` or `qwen3_next`, nor fla's model types.
MODEL_TYPE = "harness_lm"


class HarnessLMConfig(PretrainedConfig):
    """A harness LanguageModel for transformers: `model` is its ModelConfig as JSON (layers, mixers, sizes)."""

    model_type = MODEL_TYPE

    model: dict | None = None
    """The ModelConfig as a dict: `models.backbone.ModelConfig` fields, mixers as {name: config fields}."""
    trained_vocab_size: int | None = None
    """Token ids from here on were added for the tokenizer (EOS, pad) and never trained: their logits are -inf, so
    they never change a prediction. None: every id is a model token."""
    plugins: list[str] | None = None
    """Modules outside the harness's `models` package that register mixers of this model (plugins)."""
    vocab_size: int = 0
    hidden_size: int = 0
    num_hidden_layers: int = 0
    tie_word_embeddings: bool = False

    def model_config(self) -> ModelConfig:
        """The models.backbone.ModelConfig this config describes."""
        try:
            load_plugins(self.plugins or ())
        except HarnessError as err:
            if not self.plugins:
                raise
            raise HarnessError(
                f"this model's mixers come from plugin modules ({', '.join(self.plugins)}): install the package that"
                f" provides them where you load it ({err})"
            ) from None
        fields = {k: _tuples(v) for k, v in (self.model or {}).items()}
        fields["mixers"] = {name: MIXERS.get(name).Config(**cfg) for name, cfg in fields["mixers"].items()}
        return ModelConfig(**fields)


def config_from_model(model_config: Any, trained_vocab_size: int | None = None, **kwargs) -> HarnessLMConfig:
    """The transformers config of a models.backbone.ModelConfig."""
    as_dict = dataclasses.asdict(model_config)
    modules = {MIXERS.get(name).__module__ for name in model_config.mixers}
    return HarnessLMConfig(
        model=as_dict,
        trained_vocab_size=trained_vocab_size,
        plugins=sorted(m for m in modules if m.split(".")[0] != "models") or None,
        vocab_size=model_config.vocab_size,
        hidden_size=model_config.d_model,
        num_hidden_layers=len(model_config.layers),
        tie_word_embeddings=model_config.tie_embeddings,
        **kwargs,
    )


def _tuples(value: Any) -> Any:
    """JSON lists back into the tuples the config dataclasses hold."""
    if isinstance(value, list):
        return tuple(_tuples(v) for v in value)
    if isinstance(value, dict):
        return {k: _tuples(v) for k, v in value.items()}
    return value


def register() -> None:
    """Register `harness_lm` with AutoConfig (idempotent). The model class registers itself with
    AutoModelForCausalLM when harness.integrations.hf_model is imported."""
    AutoConfig.register(MODEL_TYPE, HarnessLMConfig, exist_ok=True)


register()
