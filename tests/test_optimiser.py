"""``adam_beta2``: Adam's second-moment decay, set on the optimiser RecBole builds for every trainer.

Real pipeline on the generated shop (RecBole dataset -> semantic IDs -> model -> trainer).
"""

from __future__ import annotations

import pytest
from conftest import build_pipeline
from recbole.trainer import NCLTrainer

from acerec_recbole.errors import UsageError
from acerec_recbole.trainer import SemanticIDTrainer, resumable


def train_one_epoch(tmp_path, toy_data, sid_cache, **settings) -> SemanticIDTrainer:
    config, _, (train, valid, _), model = build_pipeline(
        "ACERec", toy_data, sid_cache, checkpoint_dir=str(tmp_path), epochs=1, **settings
    )
    trainer = SemanticIDTrainer(config, model)
    trainer.fit(train, valid, saved=False)
    return trainer


def test_adam_beta2_sets_every_parameter_group_and_changes_training(tmp_path, toy_data, sid_cache):
    plain = train_one_epoch(tmp_path / "plain", toy_data, sid_cache)
    lower = train_one_epoch(tmp_path / "lower", toy_data, sid_cache, adam_beta2=0.9)
    assert [group["betas"] for group in plain.optimizer.param_groups] == [(0.9, 0.999)]
    assert all(group["betas"] == (0.9, 0.9) for group in lower.optimizer.param_groups)
    assert lower.optimizer.state_dict()["param_groups"][0]["betas"] == (0.9, 0.9)  # saved with training states
    assert lower.epoch_history[0]["train_loss"] != plain.epoch_history[0]["train_loss"]


def test_adam_beta2_reaches_trainers_with_their_own_fit_loop(toy_data, sid_cache):
    config, _, _, model = build_pipeline("SASRec", toy_data, sid_cache, adam_beta2=0.98, m_step=1)
    trainer = resumable(NCLTrainer)(config, model)
    assert all(group["betas"] == (0.9, 0.98) for group in trainer.optimizer.param_groups)


def test_adam_beta2_with_an_optimiser_without_betas_names_the_learner(toy_data, sid_cache):
    config, _, _, model = build_pipeline("ACERec", toy_data, sid_cache, learner="sgd", adam_beta2=0.98)
    with pytest.raises(UsageError, match="adam_beta2=0.98 needs an Adam-type optimiser, but learner='sgd'"):
        SemanticIDTrainer(config, model)
