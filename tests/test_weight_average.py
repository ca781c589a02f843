"""``ema_decay``: an exponential moving average of the weights, kept by the trainer beside the raw ones.

Real pipeline on the generated shop (RecBole dataset -> semantic IDs -> ACERec -> trainer -> metrics):
the average follows its formula step by step, leaves training itself untouched, is what validation,
the best-model checkpoint and the trained model use, and survives an interruption exactly.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import build_pipeline, fit_until_killed

from acerec_recbole.errors import UsageError
from acerec_recbole.trainer import SemanticIDTrainer, load_checkpoint, resumable


def make_trainer(tmp_path: Path, folder: str, toy_data: Path, sid_cache: Path, **settings):
    config, _, (train, valid, _), model = build_pipeline(
        "ACERec", toy_data, sid_cache, checkpoint_dir=str(tmp_path / folder), **settings
    )
    return SemanticIDTrainer(config, model), train, valid


def weights(trainer) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in trainer.model.named_parameters() if p.requires_grad}


def test_the_average_follows_each_optimiser_step_and_training_is_unchanged(tmp_path, toy_data, sid_cache):
    plain, train, valid = make_trainer(tmp_path, "plain", toy_data, sid_cache, state_every_minutes=0)
    plain.fit(train, valid, saved=False)

    averaged, train, valid = make_trainer(tmp_path, "ema", toy_data, sid_cache, ema_decay=0.6, state_every_minutes=0)
    expected = weights(averaged)  # the average starts at the initial weights
    steps = []

    def follow(*_):  # registered after the trainer's own hook: sees the weights of the step just taken
        steps.append(1)
        n, current = len(steps), weights(averaged)
        keep = min(0.6, (1 + n) / (10 + n))
        for name in expected:
            expected[name] = keep * expected[name] + (1 - keep) * current[name]
        raw_after_steps.update(current)

    raw_after_steps: dict[str, torch.Tensor] = {}
    averaged.optimizer.register_step_post_hook(follow)
    averaged.fit(train, valid, saved=False)

    assert len(steps) == averaged.optimiser_steps == 2 * len(train) > 2
    for name, value in expected.items():
        torch.testing.assert_close(averaged.averaged_weights[name], value, rtol=1e-5, atol=1e-6)
    # the raw weights trained exactly as without the average: same losses every epoch
    assert [h["train_loss"] for h in averaged.epoch_history] == [h["train_loss"] for h in plain.epoch_history]
    # after fit the model holds the average, not the last raw weights
    after = weights(averaged)
    assert all(torch.equal(after[name], averaged.averaged_weights[name]) for name in after)
    assert any(not torch.allclose(after[name], raw_after_steps[name]) for name in after)


def test_validation_and_the_best_checkpoint_use_the_average(tmp_path, toy_data, sid_cache):
    trainer, train, valid = make_trainer(tmp_path, "ema", toy_data, sid_cache, epochs=1, ema_decay=0.9)
    best_score, _ = trainer.fit(train, valid)

    checkpoint = load_checkpoint(trainer.saved_model_file)
    state = load_checkpoint(trainer.state_file, required=("averaged_weights",))
    for name, value in trainer.averaged_weights.items():
        assert torch.equal(checkpoint["state_dict"][name], value)
        assert torch.equal(state["averaged_weights"][name], value)
    # the state keeps the raw weights, for training to go on with; they differ from the average
    assert any(not torch.equal(state["state_dict"][n], v) for n, v in trainer.averaged_weights.items())
    # the score that chose the checkpoint is the checkpoint's own score
    result = trainer.evaluate(valid, load_best_model=True)
    assert result["ndcg@10"] == pytest.approx(best_score)


def test_a_run_interrupted_mid_epoch_resumes_to_the_same_average(tmp_path, toy_data, sid_cache):
    settings = {"epochs": 3, "ema_decay": 0.95}
    whole, train, valid = make_trainer(tmp_path, "whole", toy_data, sid_cache, state_every_minutes=0, **settings)
    whole.fit(train, valid)

    stopped, train, valid = make_trainer(tmp_path, "stopped", toy_data, sid_cache, state_every_minutes=1e-9, **settings)
    fit_until_killed(stopped, train, valid, len(train) + 2)  # in the second epoch

    resumed, train, valid = make_trainer(tmp_path, "stopped", toy_data, sid_cache, state_every_minutes=1e-9, **settings)
    resumed.resume(stopped.state_file)
    resumed.fit(train, valid)
    keys = ("epoch", "train_loss", "valid_score")
    assert [tuple(h[k] for k in keys) for h in resumed.epoch_history] == [
        tuple(h[k] for k in keys) for h in whole.epoch_history
    ]
    for name, value in whole.averaged_weights.items():
        assert torch.equal(resumed.averaged_weights[name], value)


def test_a_trainer_with_its_own_fit_loop_refuses_the_average_instead_of_ignoring_it(toy_data, sid_cache):
    from recbole.trainer import NCLTrainer  # RecBole's NCL trainer replaces the fit loop

    config, _, _, model = build_pipeline("SASRec", toy_data, sid_cache, ema_decay=0.99)
    with pytest.raises(UsageError, match="ema_decay=0.99 is not supported with SASRec: its trainer \\(NCLTrainer\\)"):
        resumable(NCLTrainer)(config, model)
