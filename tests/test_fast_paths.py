"""The fast paths (length classes, read-out-only last layer, catalogue cache) against the plain computation.

``SemanticIDRecommender.plain = True`` is the reference: one padded pass, every position through
every layer, item inputs recomputed per call. Dropout is 0 so that training mode is deterministic.
"""

from __future__ import annotations

import pytest
import torch
from conftest import build_pipeline

from acerec_recbole.model.layers import TransformerBlock, length_classes

NO_DROPOUT = {"hidden_dropout_prob": 0.0, "attn_dropout_prob": 0.0}
VARIANTS = [
    ("ACERec", {}),
    ("ACERec", {"anchor": "last"}),
    ("ACERec", {"attn_qk_norm": True}),
    ("ACERec", {"tie_output_tokens": False}),
    ("RPG", {}),
]


def test_length_classes_partition_rows_by_power_of_two_length_or_finer():
    lengths = torch.tensor([5, 1, 2, 9, 3, 4, 8, 16, 17, 50, 33, 1])
    chunks = length_classes(lengths)
    assert sorted(torch.cat(chunks).tolist()) == list(range(len(lengths)))
    classes = [sorted(lengths[c].tolist()) for c in chunks]
    assert classes == [[1, 1], [2], [3, 4], [5, 8], [9, 16], [17], [33, 50]]
    every = torch.arange(1, 51)
    finer = [sorted(every[c].tolist()) for c in length_classes(every, steps_per_octave=2)]
    expected = [(1, 1), (2, 2), (3, 3), (4, 4), (5, 6), (7, 8), (9, 12), (13, 16), (17, 23), (24, 32), (33, 46)]
    assert [(c[0], c[-1]) for c in finer] == [*expected, (47, 50)]


@pytest.mark.parametrize("qk_norm", [False, True])
@pytest.mark.parametrize("per_row", [False, True])
def test_a_layer_computed_at_some_positions_equals_the_full_layer_there(per_row, qk_norm):
    torch.manual_seed(0)
    layer = TransformerBlock(16, 2, 32, residual_dropout=0.0, attn_dropout=0.0, qk_norm=qk_norm)
    x = torch.randn(3, 12, 16)
    allowed = torch.ones(12, 12, dtype=torch.bool).tril()
    full = layer(x, allowed)
    if per_row:
        queries = torch.tensor([[11], [4], [0]])
        expected = full[torch.arange(3), queries[:, 0]].unsqueeze(1)
    else:
        queries = torch.tensor([2, 5, 8, 11])
        expected = full[:, queries]
    assert torch.allclose(layer(x, allowed, queries), expected, atol=1e-6)


@pytest.mark.parametrize(("model_name", "switches"), VARIANTS)
def test_training_loss_and_gradients_equal_the_plain_pass(toy_data, sid_cache, model_name, switches):
    _, _, (train, _, _), model = build_pipeline(model_name, toy_data, sid_cache, **NO_DROPOUT, **switches)
    batch = next(iter(train))
    assert int(batch["item_length"].min()) < int(batch["item_length"].max())  # mixed lengths in the batch
    results = []
    for plain in (True, False):
        model.plain = plain
        model.zero_grad()
        loss = model.calculate_loss(batch)
        loss.backward()
        results.append((loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}))
    (plain_loss, plain_grads), (fast_loss, fast_grads) = results
    assert torch.allclose(plain_loss, fast_loss, atol=1e-5)
    assert plain_grads.keys() == fast_grads.keys()
    for name, grad in plain_grads.items():
        assert torch.allclose(grad, fast_grads[name], atol=1e-5, rtol=1e-4), name


@pytest.mark.parametrize(("model_name", "switches"), VARIANTS)
def test_evaluation_scores_and_top10_equal_the_plain_pass(toy_data, sid_cache, model_name, switches):
    _, _, (_, valid, _), model = build_pipeline(model_name, toy_data, sid_cache, **NO_DROPOUT, **switches)
    interaction = next(iter(valid))[0]
    assert int(interaction["item_length"].min()) < int(interaction["item_length"].max())

    def scores(plain: bool) -> torch.Tensor:
        model.plain = plain
        model.eval()
        with torch.no_grad():
            return model.full_sort_predict(interaction)

    plain, fast = scores(True), scores(False)
    assert torch.allclose(plain, fast, atol=1e-4)
    assert torch.equal(plain.topk(10).indices, fast.topk(10).indices)
    assert model._catalogue_cache is not None  # the fast path used the catalogue cache

    # a training step changes the parameters in place: the cache must not serve stale item inputs
    model.train()
    model.plain = False
    optimiser = torch.optim.SGD(model.parameters(), lr=0.5)
    model.calculate_loss(next(iter(valid))[0]).backward()
    optimiser.step()
    after_plain, after_fast = scores(True), scores(False)
    assert not torch.allclose(after_fast, fast, atol=1e-3)
    assert torch.allclose(after_plain, after_fast, atol=1e-4)


def test_items_are_distinct_at_initialisation_only_with_the_token_norm(toy_data, sid_cache):
    """With std-0.02 tokens and no norm, the summary's biases dominate: every item looks alike."""

    def mean_cosine(vectors: torch.Tensor) -> float:
        unit = torch.nn.functional.normalize(vectors.flatten(1), dim=-1)
        cosine = unit @ unit.T
        return float(cosine[~torch.eye(len(unit), dtype=torch.bool)].mean())

    measured = {}
    for norm in (True, False):
        _, _, _, model = build_pipeline("ACERec", toy_data, sid_cache, hidden_size=64, item_token_norm=norm)
        items = torch.arange(1, model.n_items)
        with torch.no_grad():
            blocks = model.item_inputs(items)
        measured[norm] = (mean_cosine(model.item_summaries(items).detach()), mean_cosine(blocks[:, :-1]))
    assert max(measured[True]) < 0.5, measured
    assert min(measured[False]) > 0.9, measured
