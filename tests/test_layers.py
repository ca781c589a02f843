"""Model layers: block-causal mask, ATM, exact scorer, RPG pooling, causality of ACERec's intent states."""

from __future__ import annotations

import pytest
import torch
from conftest import build_pipeline

from acerec_recbole.model.layers import (
    AttentiveTokenMerger,
    ParallelDigitHeads,
    SemanticTokenEmbedding,
    TransformerBlock,
    block_causal_mask,
    holistic_scores,
    holistic_topk,
    intent_semantic_alignment_loss,
)


def test_block_causal_mask_shape_and_rules():
    k = 3  # two latents + intent token per block
    allowed = block_causal_mask(num_blocks=4, block_size=k, anchor_is_separate=True)
    assert allowed.shape == (12, 12) and allowed.dtype == torch.bool
    for q in range(12):
        for key in range(12):
            qb, qs, kb, ks = q // k, q % k, key // k, key % k
            if kb > qb:
                expected = False  # never a later block
            elif kb < qb:
                expected = True  # every earlier slot
            elif qs == k - 1:
                expected = True  # the intent token sees its whole block
            else:
                expected = ks != k - 1  # latents see latents of their block, not the intent token
            assert bool(allowed[q, key]) == expected, (q, key)


def test_block_size_one_is_the_causal_mask():
    assert torch.equal(block_causal_mask(5, 1, False), torch.ones(5, 5, dtype=torch.bool).tril())


def test_atm_output_shape_and_dependence_on_the_items_tokens():
    torch.manual_seed(0)
    merger = AttentiveTokenMerger(num_digits=8, num_latents=2, hidden_size=16, num_heads=2).eval()
    tokens = torch.randn(5, 8, 16)
    summary = tokens.mean(1)
    latents = merger(tokens, summary)
    assert latents.shape == (5, 2, 16)
    changed = tokens.clone()
    changed[2, 3] += 1.0  # one token of item 2
    after = merger(changed, summary)
    assert not torch.allclose(after[2], latents[2])
    assert torch.allclose(after[[0, 1, 3, 4]], latents[[0, 1, 3, 4]])  # other items untouched


@pytest.mark.parametrize("qk_norm", [False, True])
def test_qk_norm_makes_attention_blind_to_the_scale_of_the_query_and_key_projections(qk_norm):
    torch.manual_seed(0)
    layer = TransformerBlock(16, 2, 32, residual_dropout=0.0, attn_dropout=0.0, qk_norm=qk_norm).eval()
    x, allowed = torch.randn(3, 10, 16), torch.ones(10, 10, dtype=torch.bool).tril()
    before = layer(x, allowed)
    with torch.no_grad():  # queries and keys 30 x larger, values as they were
        layer.qkv.weight[:32] *= 30.0
        layer.qkv.bias[:32] *= 30.0
    after = layer(x, allowed)
    if qk_norm:
        torch.testing.assert_close(after, before, rtol=1e-4, atol=1e-4)
    else:
        assert not torch.allclose(after, before, atol=1e-2)


def test_holistic_scores_equal_brute_force():
    torch.manual_seed(0)
    log_probs = torch.log_softmax(torch.randn(3, 4, 16), dim=-1)
    codes = torch.randint(0, 16, (50, 4))
    brute = torch.stack(
        [torch.stack([sum(log_probs[b, k, codes[j, k]] for k in range(4)) for j in range(50)]) for b in range(3)]
    )
    assert torch.allclose(holistic_scores(log_probs, codes), brute, atol=1e-5)


@pytest.mark.parametrize("chunk_items", [7, 64, 1000])
def test_chunked_topk_equals_the_topk_of_the_full_score_matrix(chunk_items):
    torch.manual_seed(0)
    log_probs = torch.log_softmax(torch.randn(5, 8, 16), dim=-1)
    codes = torch.randint(0, 16, (300, 8), dtype=torch.uint8)
    full = holistic_scores(log_probs, codes.long())
    values, indices = holistic_topk(log_probs, codes, k=10, chunk_items=chunk_items)
    expected = full.topk(10, dim=1)
    assert torch.equal(values, expected.values)
    assert torch.equal(full.gather(1, indices), values)  # each index carries its own exact score
    assert torch.equal(indices.sort(dim=1).values, expected.indices.sort(dim=1).values)
    assert holistic_topk(log_probs, codes[:4], k=10)[1].shape == (5, 4)  # k larger than the catalogue


def test_digit_heads_start_as_identity_and_use_cosine_over_temperature():
    torch.manual_seed(0)
    table = SemanticTokenEmbedding(4, 8, 16)
    heads = ParallelDigitHeads(4, 16, temperature=0.5)
    hidden = torch.randn(2, 16)
    logits = heads(hidden, table.table())
    expected = torch.nn.functional.cosine_similarity(hidden[:, None, None], table.table()[None], dim=-1) / 0.5
    assert logits.shape == (4, 2, 8) and torch.allclose(logits.transpose(0, 1), expected, atol=1e-5)


def test_isa_loss_prefers_aligned_intents():
    summaries = torch.eye(4)
    aligned = intent_semantic_alignment_loss(torch.eye(4), summaries, torch.arange(4), torch.zeros(4), 0.1)
    shuffled = intent_semantic_alignment_loss(
        torch.eye(4)[[1, 2, 3, 0]], summaries, torch.arange(4), torch.zeros(4), 0.1
    )
    assert aligned < 0.01 < shuffled


@pytest.mark.parametrize("anchor", ["intent", "last"])
def test_a_later_item_never_changes_an_earlier_intent_state(toy_data, sid_cache, anchor):
    _, _, _, model = build_pipeline("ACERec", toy_data, sid_cache, anchor=anchor)
    model.eval()
    seq = torch.tensor([[3, 7, 11, 2, 9, 4]])
    lengths = torch.tensor([6])
    before = model(seq, lengths)
    changed = seq.clone()
    changed[0, 4] = 20
    after = model(changed, lengths)
    assert torch.allclose(before[:, :4], after[:, :4], atol=1e-6)
    assert not torch.allclose(before[:, 4], after[:, 4])


def test_rpg_input_is_the_mean_of_its_token_embeddings(toy_data, sid_cache):
    _, _, _, model = build_pipeline("RPG", toy_data, sid_cache)
    items = torch.tensor([1, 5, 9])
    tokens = model.tokens.weight[model.item_codes[items] + model.tokens.digit_offsets]  # (3, m, d)
    assert torch.allclose(model.item_inputs(items)[:, 0], tokens.mean(dim=1))
