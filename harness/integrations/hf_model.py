"""The harness LanguageModel as a transformers model: `HarnessForCausalLM` (PreTrainedModel + GenerationMixin).

It wraps the plain `models.backbone.LanguageModel` that the trainer uses (state-dict keys get the prefix `model.`),
so training keeps its own fast path. `generate()` uses the model's own decoding cache (`ModelCache`: recurrent and
convolution states, MLA's latent cache), made at the first forward and handed back through the output's `cache`.
On CUDA it is the fast path instead (`models/decoding.py`): a `StaticCache` of the final length, the one-token
step replayed as a CUDA graph; `generate(static_cache=...)` chooses explicitly (True on the CPU runs the same
static buffers eagerly). Left-padded batches are supported (pads masked in every mixer); right padding is not.

Importing this module registers the class with AutoModelForCausalLM for model_type `harness_lm`. A saved model
also loads without that import, with `trust_remote_code=True`: `save_pretrained` writes the two modules that
transformers then loads (remote_code.py).
"""

from __future__ import annotations

from dataclasses import replace

import torch
import torch.nn.functional as F
from torch import Tensor
from transformers import AutoModelForCausalLM, GenerationMixin, PreTrainedModel
from transformers.modeling_outputs import CausalLMOutputWithPast

from harness.integrations.hf_config import HarnessLMConfig, config_from_model
from harness.integrations.remote_code import AUTO_MAP, write_remote_code
from models.backbone import LanguageModel, ModelCache
from models.decoding import StaticCache, static_cache_unsupported

# transformers renamed the decoding cache of generate() and of the model outputs from `past_key_values` to `cache`
# (5.24 has `cache`, 5.17 `past_key_values`); the model speaks whichever the installed version does
CACHE_NAME = "cache" if "cache" in CausalLMOutputWithPast.__dataclass_fields__ else "past_key_values"


class HarnessForCausalLM(PreTrainedModel, GenerationMixin):
    config_class = HarnessLMConfig
    base_model_prefix = "model"
    main_input_name = "input_ids"
    _no_split_modules = ["Block"]
    _tied_weights_keys = {"model.lm_head.weight": "model.embed.weight"}

    def __init__(self, config: HarnessLMConfig):
        super().__init__(config)
        self.model = LanguageModel(config.model_config())
        self._static_cache: bool | None = None  # what the generate() call in progress asked for
        self.post_init()

    def _init_weights(self, module) -> None:
        # LanguageModel initialises its own weights (models/backbone.py); a checkpoint overwrites them all.
        pass

    @classmethod
    def _supports_default_dynamic_cache(cls) -> bool:
        # the cache is the model's own ModelCache, made by forward(); transformers' DynamicCache holds K/V only
        return False

    @classmethod
    def from_language_model(
        cls, model: LanguageModel, added_tokens: int = 0, **config_fields
    ) -> HarnessForCausalLM:
        """A transformers model with the weights of `model`; `added_tokens` extra ids (e.g. EOS and pad) get zero
        embeddings and -inf logits (HarnessLMConfig.trained_vocab_size)."""
        trained = model.config.vocab_size
        model_config = model.config
        if added_tokens:
            model_config = replace(model_config, vocab_size=trained + added_tokens)
        config = config_from_model(
            model_config, trained_vocab_size=trained if added_tokens else None, **config_fields
        )
        hf = cls(config)
        state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        for key in ("embed.weight", "lm_head.weight"):
            state[key] = F.pad(state[key], (0, 0, 0, added_tokens))
        hf.model.load_state_dict(state)
        return hf.to(next(model.parameters()).device)

    def save_pretrained(self, save_directory, *args, **kwargs) -> None:
        """transformers' save_pretrained, plus the config's `auto_map` and the modules it names, so that the folder
        loads with trust_remote_code=True in a process that never imported the harness (remote_code.py)."""
        self.config.auto_map = dict(AUTO_MAP)
        super().save_pretrained(save_directory, *args, **kwargs)
        write_remote_code(save_directory)

    def generate(self, *args, static_cache: bool | None = None, **kwargs):
        """transformers' generate(). static_cache: decode with a StaticCache of the final length, the one-token
        step a CUDA graph on CUDA (the fast path); None: on CUDA when every mixer has a static cache. Only for one
        sequence per prompt (no beams); otherwise, and with use_cache=False, as without it."""
        self._static_cache = static_cache
        try:
            return super().generate(*args, **kwargs)
        finally:
            self._static_cache = None

    def _prepare_cache_for_generation(
        self, generation_config, model_kwargs, generation_mode, batch_size, max_cache_length, *args, **kwargs
    ):
        # transformers' hook that makes the cache of a generate() call: the place where the batch and the final
        # length are known
        wanted = self._static_cache
        if wanted is None:
            wanted = self.device.type == "cuda" and not static_cache_unsupported(self.model)
        one_sequence = generation_config.num_beams == 1 and generation_config.num_return_sequences == 1
        if wanted and one_sequence and generation_config.use_cache and model_kwargs.get(CACHE_NAME) is None:
            cache = StaticCache(self.model, batch_size, max_cache_length)
            model_kwargs[CACHE_NAME] = cache.capture(self.model)
            return
        return super()._prepare_cache_for_generation(
            generation_config, model_kwargs, generation_mode, batch_size, max_cache_length, *args, **kwargs
        )

    def get_input_embeddings(self):
        return self.model.embed

    def get_output_embeddings(self):
        return self.model.lm_head

    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        cache: ModelCache | None = None,
        use_cache: bool | None = None,
        labels: Tensor | None = None,
        return_dict: bool | None = None,
        past_key_values: ModelCache | None = None,
        **kwargs,
    ) -> CausalLMOutputWithPast:
        """Logits of input_ids (B, T). attention_mask (B, past + T): 1 for tokens, 0 for left padding. With
        use_cache, the returned `cache` continues the sequence in the next call (input_ids then only the new
        tokens). labels: the usual shifted next-token loss, -100 ignored."""
        # a plain call (lm-eval's scoring) runs the training path; generate() asks for the cache
        use_cache = bool(use_cache)
        cache = cache if cache is not None else past_key_values  # the older name (see CACHE_NAME)
        if use_cache and cache is None:
            cache = self.model.new_cache()
        if attention_mask is not None and bool(attention_mask.all()):
            attention_mask = None  # no padding: the mixers' plain path
        logits = self.model(input_ids, cache=cache if use_cache else None, attention_mask=attention_mask)
        trained = self.config.trained_vocab_size
        if trained is not None and trained < logits.shape[-1]:
            logits[..., trained:] = float("-inf")
        loss = None
        if labels is not None:
            loss = F.cross_entropy(
                logits[:, :-1].float().flatten(0, 1), labels[:, 1:].flatten(), ignore_index=-100
            )
        return CausalLMOutputWithPast(loss=loss, logits=logits, **{CACHE_NAME: cache if use_cache else None})

    def cache_bytes(self, seq_len: int, dtype: torch.dtype | None = None) -> int:
        """Bytes of the decoding cache per sequence after seq_len tokens (see LanguageModel.cache_bytes)."""
        return self.model.cache_bytes(seq_len, dtype or self.dtype)


AutoModelForCausalLM.register(HarnessLMConfig, HarnessForCausalLM, exist_ok=True)
