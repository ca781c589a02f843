"""ACERec and RPG through RecBole's own dataset, trainer and evaluator on the generated dataset."""

from __future__ import annotations

import logging
import re

import numpy as np
import pytest
import torch
from conftest import build_pipeline, toy_config
from recbole.quick_start import load_data_and_model
from recbole.utils.case_study import full_sort_topk

from acerec_recbole import run
from acerec_recbole.data import TARGET_SEQ_FIELD
from acerec_recbole.data.dataset import training_windows
from acerec_recbole.errors import UsageError
from acerec_recbole.trainer import SemanticIDTrainer, annealed_temperature, load_checkpoint, warmup_cosine


def test_warmup_cosine_schedule():
    factor = warmup_cosine(total_steps=100, warmup_steps=10)
    assert factor(0) == pytest.approx(0.1) and factor(9) == pytest.approx(1.0)
    assert factor(55) == pytest.approx(0.5) and factor(100) == pytest.approx(0.0)


@pytest.mark.parametrize("epochs", [2, 4])
def test_warmup_steps_hold_the_warm_up_whatever_the_epochs(toy_data, sid_cache, epochs):
    config, _, (train, _, _), model = build_pipeline("ACERec", toy_data, sid_cache, epochs=epochs, warmup_steps=3)
    factor = SemanticIDTrainer(config, model).build_scheduler(train).lr_lambdas[0]
    total = epochs * len(train)
    assert total > 6
    assert [factor(step) for step in range(4)] == pytest.approx([1 / 3, 2 / 3, 1.0, 1.0])
    assert 0 < factor(total - 1) < factor(total // 2) < 1 and factor(total) == pytest.approx(0.0)


def test_warmup_ratio_moves_with_the_epochs_when_no_steps_are_given(toy_data, sid_cache):
    config, _, (train, _, _), model = build_pipeline("ACERec", toy_data, sid_cache, epochs=4, warmup_ratio=0.5)
    factor = SemanticIDTrainer(config, model).build_scheduler(train).lr_lambdas[0]
    warmup = int(4 * len(train) * 0.5)
    assert factor(0) == pytest.approx(1 / warmup) and factor(warmup - 1) == pytest.approx(1.0)


def test_warmup_steps_as_long_as_the_training_are_refused_naming_both_lengths(toy_data, sid_cache):
    config, _, (train, _, _), model = build_pipeline("ACERec", toy_data, sid_cache, epochs=1, warmup_steps=10**6)
    message = f"warmup_steps=1000000 is not shorter than the whole training ({len(train)} optimiser steps)"
    with pytest.raises(UsageError, match=re.escape(message)):
        SemanticIDTrainer(config, model).build_scheduler(train)


def test_annealed_temperature_goes_linearly_from_start_to_end_then_holds():
    gamma = annealed_temperature(0.05, 0.03, anneal_steps=10)
    assert gamma(0) == 0.05 and gamma(5) == pytest.approx(0.04) and gamma(9) == pytest.approx(0.032)
    assert gamma(10) == 0.03 and gamma(1000) == 0.03
    assert annealed_temperature(0.05, 0.03, anneal_steps=0)(0) == 0.03  # ratio 0: no annealing


@pytest.mark.parametrize("start", [None, 0.1])
def test_mtp_temperature_annealing_trains_each_step_at_its_gamma_and_checkpoints_carry_it(toy_data, sid_cache, start):
    """Every optimiser step's loss sees the scheduled gamma; the best checkpoint keeps the gamma of its epoch,
    and RecBole's own load_data_and_model restores it."""
    settings = {"epochs": 2, "mtp_temperature_start": start, "mtp_temperature_anneal_ratio": 1.0}
    config, _, (train, valid, _), model = build_pipeline("ACERec", toy_data, sid_cache, **settings)
    seen, loss = [], model.calculate_loss
    model.calculate_loss = lambda interaction: (seen.append(model.mtp_temperature), loss(interaction))[1]
    trainer = SemanticIDTrainer(config, model)
    trainer.fit(train, valid)
    steps = 2 * len(train)
    gamma = annealed_temperature(0.1, 0.03, steps) if start else (lambda step: 0.03)
    assert trainer.optimiser_steps == steps
    assert seen == pytest.approx([gamma(step) for step in range(steps)], abs=1e-12)
    assert len(set(seen)) == (steps if start else 1) and model.mtp_temperature == 0.03
    checkpoint = load_checkpoint(trainer.saved_model_file)
    saved_gamma = checkpoint["other_parameter"]["mtp_temperature"]
    assert saved_gamma == pytest.approx(gamma((checkpoint["epoch"] + 1) * len(train)), abs=1e-12)
    assert load_data_and_model(trainer.saved_model_file)[1].mtp_temperature == saved_gamma


def test_training_windows_use_every_target_once_and_cut_long_users():
    sequences = {1: np.arange(1, 13), 2: np.array([5, 6, 7])}  # user 1: 12 items, 11 targets
    windows = training_windows(sequences, 4, "user_id", "item_id", "item_id_list", "item_length")
    targets = windows[TARGET_SEQ_FIELD]
    user1 = windows["user_id"] == 1
    assert sorted(targets[user1][targets[user1] > 0].tolist()) == list(range(2, 13))
    assert windows["item_length"][user1].tolist() == [4, 4, 3]  # cut from the end
    assert windows["item_id_list"][user1][0].tolist() == [8, 9, 10, 11]
    assert targets[user1][0].tolist() == [9, 10, 11, 12]
    assert windows["item_id"][user1][0] == 12


def test_dataset_training_split_matches_recbole_targets(toy_data, sid_cache):
    _, _, (train, valid, test), _ = build_pipeline("RPG", toy_data, sid_cache)
    from recbole.data import create_dataset, data_preparation

    from acerec_recbole import Config

    config = Config("SASRec", "toyshop", config_dict=toy_config(toy_data, sid_cache))
    sasrec_train, sasrec_valid, _ = data_preparation(config, create_dataset(config))
    ours = train.dataset.inter_feat[TARGET_SEQ_FIELD]
    assert sorted(ours[ours > 0].tolist()) == sorted(sasrec_train.dataset.inter_feat["item_id"].tolist())
    assert len(train.dataset) < len(sasrec_train.dataset)  # one sample per window, not per prefix
    assert valid.dataset.inter_feat["item_id"].equal(sasrec_valid.dataset.inter_feat["item_id"])


@pytest.mark.parametrize("model_name", ["ACERec", "RPG"])
def test_loss_decreases_over_a_few_steps(toy_data, sid_cache, model_name):
    _, _, (train, _, _), model = build_pipeline(model_name, toy_data, sid_cache)
    batch = next(iter(train))
    optimiser = torch.optim.Adam(model.parameters(), lr=0.01)
    losses = []
    for _ in range(15):
        loss = model.calculate_loss(batch)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0]


@pytest.mark.parametrize(
    "switches",
    [
        {"merger": "mean"},
        {"merger": "mlp"},
        {"merger": "conv"},
        {"anchor": "last"},
        {"isa_weight": 0.0},
        {"num_latents": 4},
        {"mtp_logit_adjustment": 1.0},
        {"reconstruction_weight": 0.05},
        {"reconstruction_weight": 0.05, "anchor": "last", "merger": "mean"},
    ],
)
def test_ablation_switches_build_and_train(toy_data, sid_cache, switches):
    _, _, (train, valid, _), model = build_pipeline("ACERec", toy_data, sid_cache, **switches)
    loss = model.calculate_loss(next(iter(train)))
    loss.backward()
    assert torch.isfinite(loss)
    interaction = next(iter(valid))[0]
    assert model.full_sort_predict(interaction).shape == (len(interaction), model.n_items)


@pytest.mark.parametrize("model_name", ["ACERec", "RPG"])
def test_position_init_std_sets_how_much_order_the_inputs_carry_at_initialisation(toy_data, sid_cache, model_name):
    """At 0.02 ACERec's positions are a few percent of its (normalised) item inputs; at 1.0 they are on a par."""
    share = {}
    for std in (0.02, 1.0):
        _, _, _, model = build_pipeline(model_name, toy_data, sid_cache, hidden_size=64, position_init_std=std)
        positions = model.position_inputs(model.max_seq_length)
        weights = [p for n, p in model.named_parameters() if "step_" in n or "slot_" in n or "position_" in n]
        assert len(weights) == (2 if model_name == "ACERec" else 1)
        assert all(float(w.detach().std()) == pytest.approx(std, rel=0.1) for w in weights)
        with torch.no_grad():
            items = model.item_inputs(torch.arange(1, model.n_items))
        share[std] = float(positions.detach().norm(dim=-1).mean() / items.norm(dim=-1).mean())
    assert share[1.0] > 20 * share[0.02]
    if model_name == "ACERec":
        assert share[0.02] < 0.1 < 0.5 < share[1.0], share


def test_token_init_std_scales_the_token_table_and_acerec_scores_do_not_depend_on_that_scale(toy_data, sid_cache):
    """The same draws, scaled; ACERec's scores unchanged (LayerNorm at the input, cosine at the output), so
    the std only changes how far each optimiser step moves the tokens relative to their size (up to LayerNorm's
    eps, which weighs 0.1 % at std 0.1 and about 1 % at 0.02)."""
    models = {}
    for std in (0.1, 0.5):
        _, _, (_, valid, _), models[std] = build_pipeline(
            "ACERec", toy_data, sid_cache, hidden_size=64, token_init_std=std
        )
    small, large = models[0.1], models[0.5]
    torch.testing.assert_close(large.tokens.weight, small.tokens.weight * 5)
    assert float(small.tokens.weight.detach().std()) == pytest.approx(0.1, rel=0.05)
    others = [(n, p) for n, p in small.state_dict().items() if n != "tokens.weight"]
    assert all(torch.equal(p, large.state_dict()[n]) for n, p in others)
    small.eval(), large.eval()
    interaction = next(iter(valid))[0]
    with torch.no_grad():
        torch.testing.assert_close(
            large.full_sort_predict(interaction),
            small.full_sort_predict(interaction),
            rtol=2e-3,
            atol=1e-3,  # LayerNorm eps: not exactly scale-free
        )


@pytest.mark.parametrize("model_name", ["ACERec", "RPG"])
def test_untied_output_tokens_are_what_the_heads_score_against_and_item_inputs_never_read(
    toy_data, sid_cache, model_name
):
    """Tied (the default): one table, read for the item inputs and scored against by the heads. Untied: the heads
    get a table of their own; each table then changes one side only, and the MTP loss trains both."""
    _, _, (train, _, _), tied = build_pipeline(model_name, toy_data, sid_cache)
    _, _, _, untied = build_pipeline(model_name, toy_data, sid_cache, tie_output_tokens=False)
    assert tied.output_tokens is None and not any("output_tokens" in name for name in tied.state_dict())
    assert untied.output_tokens.weight.shape == untied.tokens.weight.shape
    assert float(untied.output_tokens.weight.detach().std()) == pytest.approx(0.02, rel=0.1)  # the input table's std
    _, _, _, wide = build_pipeline(model_name, toy_data, sid_cache, tie_output_tokens=False, output_token_init_std=0.5)
    assert float(wide.output_tokens.weight.detach().std()) == pytest.approx(0.5, rel=0.1)
    assert float(wide.tokens.weight.detach().std()) == pytest.approx(0.02, rel=0.1)
    torch.manual_seed(0)
    states, items = torch.randn(3, tied.hidden_size), torch.arange(1, tied.n_items)

    def sides(model) -> tuple[torch.Tensor, torch.Tensor]:
        return model.item_inputs(items), model.digit_log_probs(states)

    tied.eval(), untied.eval()
    with torch.no_grad():
        inputs, log_probs = sides(tied)
        tied.tokens.weight.copy_(torch.randn_like(tied.tokens.weight) * 0.02)
        assert not torch.allclose(sides(tied)[0], inputs) and not torch.allclose(sides(tied)[1], log_probs)

        inputs, log_probs = sides(untied)
        untied.output_tokens.weight.copy_(torch.randn_like(untied.output_tokens.weight) * 0.02)
        new_inputs, new_log_probs = sides(untied)
        assert torch.equal(new_inputs, inputs) and not torch.allclose(new_log_probs, log_probs)
        untied.tokens.weight.copy_(torch.randn_like(untied.tokens.weight) * 0.02)
        assert not torch.allclose(sides(untied)[0], new_inputs) and torch.equal(sides(untied)[1], new_log_probs)

    untied.train()
    untied.calculate_loss(next(iter(train))).backward()
    assert float(untied.tokens.weight.grad.abs().sum()) > 0 and float(untied.output_tokens.weight.grad.abs().sum()) > 0


@pytest.mark.parametrize("model_name", ["ACERec", "RPG"])
def test_mtp_logit_adjustment_adds_the_code_prior_in_training_and_leaves_scoring_alone(toy_data, sid_cache, model_name):
    _, _, (train, valid, _), plain = build_pipeline(model_name, toy_data, sid_cache)
    _, _, _, adjusted = build_pipeline(model_name, toy_data, sid_cache, mtp_logit_adjustment=0.5)
    adjusted.load_state_dict(plain.state_dict())  # the prior is not in the state: same keys as before
    codes, counts = plain.item_codes, train.dataset.item_train_counts
    prior = adjusted.code_log_prior
    assert torch.allclose(prior.exp().sum(1), torch.ones(plain.num_digits))
    for digit, code in [(0, int(codes[1, 0])), (plain.num_digits - 1, int(codes[2, -1]))]:
        carriers = (codes[:, digit] == code).nonzero().flatten()
        share = (int(counts[carriers].sum()) + 1) / (int(counts.sum()) + plain.codebook_size)
        assert float(prior[digit, code].exp()) == pytest.approx(share, rel=1e-5)

    plain.eval(), adjusted.eval()  # no dropout: both see the same states
    with torch.no_grad():
        states, targets = plain.training_states(next(iter(train)))
        logits = plain.heads(states, plain.tokens.table()) + 0.5 * prior.unsqueeze(1)
        expected = torch.nn.functional.cross_entropy(logits.permute(1, 2, 0), codes[targets])
        assert float(adjusted.token_loss(states, targets)) == pytest.approx(float(expected), rel=1e-5)
        assert float(plain.token_loss(states, targets)) != pytest.approx(float(expected), rel=1e-3)
        interaction = next(iter(valid))[0]
        assert torch.equal(adjusted.full_sort_predict(interaction), plain.full_sort_predict(interaction))


@pytest.mark.parametrize("model_name", ["ACERec", "RPG"])
def test_mtp_label_smoothing_mixes_each_digits_cross_entropy_with_the_mean_over_codes(toy_data, sid_cache, model_name):
    _, _, (train, _, _), plain = build_pipeline(model_name, toy_data, sid_cache, mtp_logit_adjustment=0.5)
    _, _, _, smoothed = build_pipeline(
        model_name, toy_data, sid_cache, mtp_logit_adjustment=0.5, mtp_label_smoothing=0.2
    )
    smoothed.load_state_dict(plain.state_dict())
    plain.eval(), smoothed.eval()
    with torch.no_grad():
        states, targets = plain.training_states(next(iter(train)))
        logits = plain.heads(states, plain.tokens.table()) + 0.5 * plain.code_log_prior.unsqueeze(1)
        log_p = torch.log_softmax(logits, dim=-1)  # (m, N, M)
        true = -log_p.gather(2, plain.item_codes[targets].T.unsqueeze(-1)).mean()
        uniform = -log_p.mean()
        assert float(plain.token_loss(states, targets)) == pytest.approx(float(true), rel=1e-5)
        assert float(smoothed.token_loss(states, targets)) == pytest.approx(float(0.8 * true + 0.2 * uniform), rel=1e-5)


def test_reconstruction_weight_adds_the_v2_loss_that_rebuilds_each_items_tokens_from_its_latents(toy_data, sid_cache):
    _, _, (train, _, _), plain = build_pipeline("ACERec", toy_data, sid_cache)
    _, _, _, model = build_pipeline("ACERec", toy_data, sid_cache, reconstruction_weight=0.5)
    extra = set(model.state_dict()) - set(plain.state_dict())
    assert extra and all(key.startswith("reconstructor.") for key in extra)  # off: the model as it was
    model.load_state_dict({**model.state_dict(), **plain.state_dict()})

    def rebuild_error(batch) -> torch.Tensor:
        items = torch.unique(batch[model.ITEM_SEQ])
        items = items[items > 0]
        tokens = model.token_norm(model.tokens(model.item_codes[items]))
        rebuilt = model.reconstructor(model.item_inputs(items)[:, : model.num_latents])
        return 1 - torch.nn.functional.cosine_similarity(rebuilt, tokens, dim=-1).mean()

    batch = next(iter(train))
    model.eval(), plain.eval()
    with torch.no_grad():
        expected = plain.calculate_loss(batch) + 0.5 * rebuild_error(batch)
        assert float(model.calculate_loss(batch)) == pytest.approx(float(expected), rel=1e-5)
        before = float(rebuild_error(batch))

    model.train()
    optimiser = torch.optim.Adam(model.parameters(), lr=0.01)
    for _ in range(3):
        for step_batch in train:
            optimiser.zero_grad()
            model.calculate_loss(step_batch).backward()
            optimiser.step()
    model.eval()
    with torch.no_grad():
        after = float(rebuild_error(batch))
    assert after < 0.5 * before, (before, after)  # the latents now carry what the tokens say


def test_isa_score_weight_adds_the_isa_heads_item_score_at_inference(toy_data, sid_cache):
    _, _, (_, valid, _), plain = build_pipeline("ACERec", toy_data, sid_cache)
    _, _, _, blended = build_pipeline("ACERec", toy_data, sid_cache, isa_score_weight=2.0)
    blended.load_state_dict(plain.state_dict())
    plain.eval(), blended.eval()
    interaction = next(iter(valid))[0]
    with torch.no_grad():
        states = plain.user_states(interaction)
        summaries = plain.item_summaries(torch.arange(plain.n_items))
        cosine = torch.nn.functional.normalize(states, dim=-1) @ torch.nn.functional.normalize(summaries, dim=-1).T
        expected = plain.full_sort_predict(interaction) + 2.0 * (cosine / plain.isa_temperature - plain.popularity_bias)
        assert torch.allclose(blended.full_sort_predict(interaction), expected, atol=1e-4)
        assert not torch.allclose(plain.full_sort_predict(interaction), expected, atol=1e-2)
        # items added after training (serving) have no popularity bias and still get a score
        blended.item_codes = torch.cat([blended.item_codes, blended.item_codes[1:2]])
        scores = blended.full_sort_predict(interaction)
        assert scores.shape == (len(interaction), plain.n_items + 1)
        assert torch.allclose(scores[:, -1], expected[:, 1] + 2.0 * plain.popularity_bias[1], atol=1e-4)


@pytest.mark.parametrize("isa_score_weight", [0.0, 2.0])
def test_predict_matches_full_sort_scores(toy_data, sid_cache, isa_score_weight):
    _, _, (_, valid, _), model = build_pipeline("ACERec", toy_data, sid_cache, isa_score_weight=isa_score_weight)
    model.eval()
    interaction = next(iter(valid))[0]
    full = model.full_sort_predict(interaction)
    pointwise = model.predict(interaction)
    rows = torch.arange(len(interaction))
    assert torch.allclose(full[rows, interaction["item_id"]], pointwise, atol=1e-4)


def test_unknown_model_and_bad_switch_are_clear_errors(toy_data, sid_cache):
    with pytest.raises(ValueError, match="Unknown model 'ACERek'"):
        build_pipeline("ACERek", toy_data, sid_cache)
    with pytest.raises(ValueError, match="merger='pool'"):
        build_pipeline("ACERec", toy_data, sid_cache, merger="pool")


@pytest.mark.parametrize("model_name", ["ACERec", "RPG"])
def test_run_trains_evaluates_and_checkpoint_round_trips(toy_data, sid_cache, model_name):
    """Through RecBole's trainer; then RecBole's own load_data_and_model restores identical scores."""
    result = run(model_name, "toyshop", config_dict=toy_config(toy_data, sid_cache, epochs=3))
    assert set(result["test_result"]) == {"recall@5", "recall@10", "ndcg@5", "ndcg@10"}
    assert result["test_result"]["recall@10"] > 0
    trainer = result["trainer"]
    assert type(trainer).__name__ == "SemanticIDTrainer"  # found by RecBole's own get_trainer
    assert trainer.optimizer.param_groups[0]["lr"] < 0.5 * result["config"]["learning_rate"]  # cosine decayed
    config, loaded, _, _, _, test_data = load_data_and_model(result["model_file"])
    trained = result["model"].eval()
    loaded.eval()
    interaction = next(iter(test_data))[0]
    with torch.no_grad():
        assert torch.equal(trained.full_sort_predict(interaction), loaded.full_sort_predict(interaction))
    assert config["model"] == model_name
    users = test_data.dataset.inter_feat["user_id"][:3].numpy()
    scores, items = full_sort_topk(users, loaded, test_data, k=5, device=config["device"])
    assert items.shape == (3, 5) and bool((scores[:, :-1] >= scores[:, 1:]).all())


def test_per_prefix_batches_train_on_the_last_position(toy_data, sid_cache):
    """A batch without a target list (RecBole's own per-prefix samples) predicts its item_id from the end."""
    _, _, (_, valid, _), model = build_pipeline("RPG", toy_data, sid_cache)
    model.eval()
    interaction = next(iter(valid))[0]
    states, targets = model.training_states(interaction)
    assert targets.equal(interaction["item_id"])
    assert torch.allclose(states, model.user_states(interaction), atol=1e-6)


def test_the_forecast_batch_leaves_training_exactly_as_it_was(toy_data, sid_cache, monkeypatch, caplog):
    """run() first times one training batch (forecast); with all random generators restored, the run
    that follows is the one without the forecast, to the last digit."""
    from acerec_recbole import quick_start

    settings = toy_config(toy_data, sid_cache, epochs=2, hidden_dropout_prob=0.3, state="INFO")
    monkeypatch.setattr(quick_start, "FORECAST_WARN_HOURS", 0.0)  # every forecast is "too long" here
    with caplog.at_level(logging.WARNING):
        forecast = run("ACERec", "toyshop", config_dict=settings)
    assert "These settings look far beyond this machine" in caplog.text
    monkeypatch.setattr(quick_start, "forecast_run", lambda *args, **kwargs: {})
    plain = run("ACERec", "toyshop", config_dict=settings)
    assert forecast["test_result"] == plain["test_result"]
    assert [h["train_loss"] for h in forecast["trainer"].epoch_history] == [
        h["train_loss"] for h in plain["trainer"].epoch_history
    ]


def test_the_forecast_uses_the_fastest_of_a_few_batches_and_stops_timing_when_they_are_slow(
    toy_data, sid_cache, monkeypatch, caplog
):
    """The first batch pays one-time costs, so the forecast times up to FORECAST_BATCHES and takes the
    fastest; past FORECAST_MAX_SECONDS it stops after the batch it is in."""
    from acerec_recbole import quick_start

    _, _, (train, _, _), model = build_pipeline("ACERec", toy_data, sid_cache)
    assert len(train) >= quick_start.FORECAST_BATCHES
    logger = logging.getLogger("forecast-test")
    with caplog.at_level(logging.INFO, logger="forecast-test"):
        forecast = quick_start.forecast_run(model, train, 5, logger)
    seconds = forecast["batch_seconds"]
    assert len(seconds) == quick_start.FORECAST_BATCHES
    assert forecast["hours"] == pytest.approx(min(seconds) * len(train) * 5 / 3600)
    assert f"fastest of {quick_start.FORECAST_BATCHES} training batches" in caplog.text
    assert all(p.grad is None for p in model.parameters())

    monkeypatch.setattr(quick_start, "FORECAST_MAX_SECONDS", 0.0)
    assert len(quick_start.forecast_run(model, train, 5, logger)["batch_seconds"]) == 1


def test_a_resumed_run_forecasts_from_its_finished_epochs(caplog):
    from acerec_recbole.quick_start import forecast_from_epochs

    history = [{"train_seconds": 100.0, "valid_seconds": 20.0}, {"train_seconds": 140.0}]
    logger = logging.getLogger("forecast-test")
    with caplog.at_level(logging.INFO, logger="forecast-test"):
        assert forecast_from_epochs(history, 6, logger)["hours"] == pytest.approx(130.0 * 6 / 3600)
    assert "Forecast from its 2 finished epochs: ~2.2 min per epoch" in caplog.text
    assert forecast_from_epochs(history, 0, logger) == {}
