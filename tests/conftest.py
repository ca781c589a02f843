"""Shared fixtures: a small generated dataset in RecBole's atomic format, and small model settings.

The generated catalogue has four topics with templated titles, and users who mostly stay within one
topic, so that text similarity and sequential signal are both real (if small).
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import yaml

import acerec_recbole  # noqa: F401  (applies the RecBole compatibility patches first)

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"

TOPICS = {
    "shoes": ("running shoes for men size {n}", "Sports | Footwear | Running"),
    "cookies": ("chocolate chip cookies family pack {n}", "Grocery | Snacks | Cookies"),
    "audio": ("wireless bluetooth headphones model {n}", "Electronics | Audio | Headphones"),
    "books": ("classic science fiction novel volume {n}", "Books | Fiction | Science Fiction"),
}
ITEMS_PER_TOPIC = 12

# Small but complete settings: m=8 digits x M=16 codes, d=32. Fast on 2 cores.
SMALL = {
    "sid_num_digits": 8,
    "sid_codebook_size": 16,
    "sid_opq_iters": 5,
    "hidden_size": 32,
    "inner_size": 64,
    "n_layers": 1,
    "n_heads": 2,
    "merger_heads": 2,
    "num_latents": 2,
    "hidden_dropout_prob": 0.1,
    "attn_dropout_prob": 0.0,
    "MAX_ITEM_LIST_LENGTH": 10,
    "train_batch_size": 32,
    "eval_batch_size": 64,
    "epochs": 2,
    "learning_rate": 0.005,
    "seed": 7,
    "show_progress": False,
    "log_wandb": False,
    "state": "WARNING",
}


def topic_of(item_token: str) -> str:
    return item_token.split("-")[0]


def write_dataset(root: Path, name: str = "toyshop", n_users: int = 80, seed: int = 0, shuffle: bool = False) -> Path:
    """Write <root>/<name>/<name>.inter/.item; returns root (the data_path)."""
    rng = random.Random(seed)
    items = [f"{topic}-{n}" for topic in TOPICS for n in range(ITEMS_PER_TOPIC)]
    rows = []
    for user in range(n_users):
        home = rng.choice(list(TOPICS))
        length = rng.randint(6, 16)
        for step in range(length):
            topic = home if rng.random() < 0.85 else rng.choice(list(TOPICS))
            # within a topic, users walk forward through the catalogue: a learnable sequential pattern
            number = (user + step) % ITEMS_PER_TOPIC
            rows.append((f"u{user}", f"{topic}-{number}", step))
    if shuffle:
        rng.shuffle(rows)
    folder = root / name
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / f"{name}.inter", "w") as handle:
        handle.write("user_id:token\titem_id:token\ttimestamp:float\n")
        handle.writelines(f"{u}\t{i}\t{t}\n" for u, i, t in rows)
    with open(folder / f"{name}.item", "w") as handle:
        handle.write("item_id:token\ttitle:token_seq\tcategories:token_seq\n")
        for item in items:
            topic, number = item.split("-")
            title, categories = TOPICS[topic]
            handle.write(f"{item}\t{title.format(n=number)}\t{categories}\n")
    return root


def toy_config(data_path: Path, cache_dir: Path, name: str = "toyshop", **overrides) -> dict:
    config = dict(SMALL)
    config.update(
        data_path=str(data_path),
        sid_cache_dir=str(cache_dir),
        sid_text_fields=["title", "categories"],
        load_col={"inter": ["user_id", "item_id", "timestamp"], "item": ["item_id", "title", "categories"]},
        checkpoint_dir=str(data_path / "saved"),
    )
    config.update(overrides)
    return config


class Interrupted(Exception):
    """Stands in for a kill between two optimiser steps."""


def fit_until_killed(trainer, train, valid, batches: int) -> None:
    """``trainer.fit`` stopped as a kill would stop it: after ``batches`` optimiser steps, before the next."""
    done, loss = [], trainer.model.calculate_loss

    def dies(interaction):
        if len(done) == batches:
            raise Interrupted
        done.append(1)
        return loss(interaction)

    trainer.model.calculate_loss = dies
    with pytest.raises(Interrupted):
        trainer.fit(train, valid)


def write_plan(path: Path, shared: dict, models: list[str], seeds: list[int], sections: dict[str, dict]) -> Path:
    """A benchmark plan file with one `cpu` profile: `shared` for every model, `sections` by model or variant name."""
    shared = {key: value for key, value in shared.items() if key != "seed"}
    plan = {"models": models, "seeds": seeds, "profiles": {"cpu": {"all": shared, **sections}}}
    path.write_text(yaml.safe_dump(plan))
    return path


@pytest.fixture(autouse=True)
def _isolated_cwd(tmp_path, monkeypatch):
    """RecBole writes log/ and log_tensorboard/ into the working directory: keep them out of the repo."""
    monkeypatch.chdir(tmp_path)


@pytest.fixture(scope="session")
def sid_cache(tmp_path_factory) -> Path:
    """One semantic-ID cache for the session, so each text set is encoded once."""
    return tmp_path_factory.mktemp("sid-cache")


@pytest.fixture()
def toy_data(tmp_path) -> Path:
    return write_dataset(tmp_path / "data")


def build_pipeline(model: str, data_path: Path, cache_dir: Path, name: str = "toyshop", **overrides):
    """RecBole's own create_dataset + data_preparation, then the model: what quick_start does."""
    from recbole.data import create_dataset, data_preparation
    from recbole.utils import init_seed

    from acerec_recbole import Config

    config = Config(model, name, config_dict=toy_config(data_path, cache_dir, name, **overrides))
    init_seed(config["seed"], True)
    dataset = create_dataset(config)
    train, valid, test = data_preparation(config, dataset)
    init_seed(config["seed"], True)
    recommender = config.model_class(config, train.dataset)
    return config, dataset, (train, valid, test), recommender
