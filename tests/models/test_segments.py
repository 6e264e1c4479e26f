"""Packed documents: a row holding several documents gives each the outputs it gets alone."""

import pytest
import torch

from models.backbone import LanguageModel, per_document
from models.layers import PackedDocuments, ShortConvolution
from models.presets import build_model_config

from .checks import contract_models

SEGMENTS = torch.tensor([[0, 0, 0, 0, 0, 1, 1, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 3, 3], [5] * 3 + [6] * 17])


def documents_alone(model, ids, segments):
    """Every document of every row run as its own sequence, outputs laid out as the packed rows."""
    out = torch.empty(*ids.shape, model.config.vocab_size)
    for row in range(ids.shape[0]):
        for seg in segments[row].unique():
            where = (segments[row] == seg).nonzero().flatten()
            out[row, where] = model(ids[row, where][None])[0]
    return out


@pytest.mark.parametrize("arch", contract_models())
def test_packed_documents_equal_documents_run_alone(arch):
    torch.manual_seed(0)
    model = LanguageModel(build_model_config(arch, "tiny", vocab_size=32, kernel_impl="torch"))
    ids = torch.randint(0, 32, SEGMENTS.shape)
    packed = model(ids, segment_ids=SEGMENTS)
    torch.testing.assert_close(packed, documents_alone(model, ids, SEGMENTS), rtol=1e-5, atol=1e-5)
    # and the boundaries matter: without them the later documents read the earlier ones
    assert not torch.allclose(model(ids), packed)


def test_the_backbone_runs_documents_alone_for_a_mixer_without_segment_support(monkeypatch):
    torch.manual_seed(0)
    model = LanguageModel(build_model_config("gdn", "tiny", vocab_size=32, kernel_impl="torch"))
    ids = torch.randint(0, 32, SEGMENTS.shape)
    expected = model(ids, segment_ids=SEGMENTS)
    monkeypatch.setattr(type(model.blocks[0].mixer), "supports_segments", False)
    torch.testing.assert_close(model(ids, segment_ids=SEGMENTS), expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(
        model.lm_head(per_document(model, ids, SEGMENTS)), expected, rtol=1e-5, atol=1e-5
    )


def test_packed_document_views():
    documents = PackedDocuments(SEGMENTS)
    assert documents.cu_seqlens.tolist() == [0, 5, 7, 18, 20, 23, 40]
    assert documents.positions[0].tolist() == [0, 1, 2, 3, 4, 0, 1] + list(range(11)) + [0, 1]
    assert documents.attention_mask[0, 0, 6].tolist() == [False] * 5 + [True, True] + [False] * 13
    rows, columns = documents.breaks(2)
    assert list(zip(rows.tolist(), columns.tolist(), strict=True)) == [
        (0, 5), (0, 6), (0, 7), (0, 8), (0, 18), (0, 19), (1, 3), (1, 4)
    ]  # fmt: skip


def test_short_convolution_keeps_documents_apart():
    torch.manual_seed(0)
    conv = ShortConvolution(6, 4, bias=True)
    x = torch.randn(2, 20, 6)
    torch.testing.assert_close(conv(x, PackedDocuments(torch.zeros(2, 20, dtype=torch.long))), conv(x))
    x.requires_grad_(True)
    packed = conv(x, PackedDocuments(SEGMENTS))
    alone = torch.zeros_like(packed)
    for row in range(2):
        for seg in SEGMENTS[row].unique():
            where = (SEGMENTS[row] == seg).nonzero().flatten()
            alone[row, where] = conv(x[row, where][None])[0]
    torch.testing.assert_close(packed, alone)
    weights = torch.randn_like(packed)
    grads = torch.autograd.grad((packed * weights).sum(), [x, conv.conv.weight])
    expected = torch.autograd.grad((alone * weights).sum(), [x, conv.conv.weight])
    for got, want in zip(grads, expected, strict=True):
        torch.testing.assert_close(got, want)


def test_packed_documents_under_bf16_autocast():
    """As on a GPU: activations in bf16, weights in float32."""
    torch.manual_seed(0)
    model = LanguageModel(build_model_config("kimi", "tiny", vocab_size=32, kernel_impl="torch"))
    ids = torch.randint(0, 32, SEGMENTS.shape)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        packed = model(ids, segment_ids=SEGMENTS)
        packed.float().sum().backward()
    torch.testing.assert_close(packed.float(), documents_alone(model, ids, SEGMENTS), rtol=0.05, atol=0.05)
