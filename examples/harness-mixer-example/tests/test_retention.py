"""The example mixer against RetNet's recurrence written here token by token; the harness's contract tests
(tests/models/test_contract.py of the harness) check the rest, for every registered mixer."""

from importlib.metadata import entry_points

import torch
import torch.nn.functional as F
from harness_mixer_example import Retention, RetentionConfig

from harness.plugins import load_plugins
from harness.registry import MIXERS

D_MODEL, H, K = 16, 2, 8


def make_retention(seed: int = 0) -> Retention:
    torch.manual_seed(seed)
    # chunk_size 4 < T, so that the chunked op carries its state across chunks
    retention = Retention(
        D_MODEL, RetentionConfig(num_heads=H, head_dim=K, chunk_size=4), kernel_impl="torch"
    )
    with torch.no_grad():
        for p in retention.parameters():  # norm weights off 1, so that a missing norm would show
            p.add_(0.2 * torch.randn_like(p))
    return retention.double()


@torch.no_grad()
def retention_reference(module: Retention, x: torch.Tensor) -> torch.Tensor:
    """S_t = gamma_h S_{t-1} + k_t v_t^T, o_t = S_t^T q_t / sqrt(K), then the gated per-head norm."""
    B, T, _ = x.shape
    q, k, v = (x @ proj.weight.T for proj in (module.q_proj, module.k_proj, module.v_proj))
    q, k, v = (t.view(B, T, H, K) for t in (q, k, v))
    gammas = 1 - torch.exp(torch.linspace(torch.tensor(1 / 32).log(), torch.tensor(1 / 512).log(), H))
    o = torch.zeros(B, T, H, K, dtype=x.dtype)
    for b in range(B):
        for h in range(H):
            S = torch.zeros(K, K, dtype=x.dtype)
            for t in range(T):
                S = gammas[h].double() * S + torch.outer(k[b, t, h], v[b, t, h])
                o[b, t, h] = S.T @ q[b, t, h] / K**0.5
    o = o / (o.pow(2).mean(-1, keepdim=True) + 1e-6).sqrt() * module.o_norm.weight
    o = o * F.silu(x @ module.g_proj.weight.T).view(B, T, H, K)
    return o.reshape(B, T, H * K) @ module.o_proj.weight.T


def rel_rms(x: torch.Tensor, ref: torch.Tensor) -> float:
    return ((x - ref).pow(2).mean().sqrt() / ref.pow(2).mean().sqrt()).item()


def test_the_installed_package_names_its_module_in_the_harness_plugins_group():
    (entry,) = [e for e in entry_points(group="harness.plugins") if e.name == "retention"]
    assert entry.module == "harness_mixer_example"
    load_plugins()  # what every harness process does
    assert MIXERS.get("retention") is Retention


def test_retention_equals_the_recurrence():
    module = make_retention()
    x = torch.randn(2, 11, D_MODEL, dtype=torch.float64)
    with torch.no_grad():
        # the module normalises in float32 (as the harness's mixers do): agreement stops near 1e-7
        assert rel_rms(module(x), retention_reference(module, x)) < 1e-5


def test_decoding_a_token_at_a_time_equals_the_whole_sequence():
    module = make_retention(1)
    x = torch.randn(2, 9, D_MODEL, dtype=torch.float64)
    state = {}
    with torch.no_grad():
        steps = [module(x[:, :4], state=state)] + [module(x[:, t : t + 1], state=state) for t in range(4, 9)]
        torch.testing.assert_close(torch.cat(steps, dim=1), module(x), rtol=1e-6, atol=1e-8)
