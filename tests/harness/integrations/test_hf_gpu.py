"""generate() on a GPU takes the fast path by itself (a static cache, the step a CUDA graph) and gives the greedy
tokens of recomputing every step, on a left-padded batch."""

import pytest
import torch

pytest.importorskip("transformers")

from .test_hf import PAD, VOCAB, hf_model  # noqa: E402 - after the skip

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("arch", ["kda", "mla", "kimi", "gdn-h"])
def test_generate_replays_the_graph_and_matches_recomputing(arch):
    model = hf_model(arch).to("cuda")
    prompts = torch.randint(VOCAB, (3, 9), generator=torch.Generator().manual_seed(1)).cuda()
    mask = torch.ones_like(prompts)
    prompts[1, :3], mask[1, :3] = PAD, 0
    modes = []
    model.model.register_forward_pre_hook(
        lambda module, args, kw: modes.append(getattr(kw.get("cache"), "mode", None)), with_kwargs=True
    )
    kwargs = dict(attention_mask=mask, max_new_tokens=8, min_new_tokens=8, do_sample=False)
    fast = model.generate(prompts, **kwargs)
    assert set(modes) == {"cuda-graph"}
    assert torch.equal(fast, model.generate(prompts, use_cache=False, **kwargs))
