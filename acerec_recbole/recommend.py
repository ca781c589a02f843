"""Serve a trained checkpoint: raw ids in, ranked raw ids with text and scores out.

    python -m acerec_recbole.recommend --checkpoint=saved/ACERec-Nov-24-2026_10-00-00.pth --user=196 [--topk=10]
    python -m acerec_recbole.recommend --checkpoint=... --history=242,302,377      # a session, no user needed
    python -m acerec_recbole.recommend --checkpoint=... --user=196 --new_items=new.item   # ACERec / RPG only

Works for ACERec, RPG and RecBole's own models (sequential ones take a history; general ones a user).
Semantic-ID models can also score items that did not exist at training time: their text is encoded
with the run's frozen encoder and quantised with the run's stored OPQ, and they join the catalogue.

Fallbacks (documented, logged): history items the model does not know are dropped; with no known
history left (or a user whose only interaction left no sequence) the ranking falls back to training
popularity. A user id that is not in the dataset, or a checkpoint that does not fit the dataset, is
an error that says what to do instead.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from logging import getLogger
from pathlib import Path
from typing import Any

import numpy as np
import torch

import acerec_recbole  # noqa: F401  (RecBole compatibility patches and model registration)
from acerec_recbole.errors import MissingInputError, UnknownIdError, UsageError, usage_errors_exit
from acerec_recbole.model.abstract import SemanticIDRecommender
from acerec_recbole.semantic_ids import (
    OPQQuantiser,
    SemanticIDError,
    SemanticIDSettings,
    encode_texts,
    item_texts,
)
from acerec_recbole.trainer import CheckpointError, load_checkpoint


@dataclass(frozen=True)
class Recommendation:
    rank: int
    item: str
    score: float
    text: str
    new: bool = False  # added after training


class Catalogue:
    """Raw item ids <-> internal ids and item texts; ids from ``trained`` on were added after training."""

    def __init__(self, tokens: Sequence[str], texts: Sequence[str]) -> None:
        self.tokens, self.texts = list(tokens), list(texts)
        self.index = {token: internal for internal, token in enumerate(self.tokens)}
        self.trained = len(self.tokens)

    def __len__(self) -> int:
        return len(self.tokens)

    def is_new(self, internal: int) -> bool:
        return internal >= self.trained

    def internal_ids(self, items: Sequence[str]) -> list[int]:
        """Internal ids of the known items, in order; unknown ones are dropped with a warning."""
        known = [self.index[str(item)] for item in items if self.index.get(str(item), 0) > 0]
        unknown = [str(item) for item in items if self.index.get(str(item), 0) <= 0]
        if unknown:
            getLogger().warning(
                f"{len(unknown)} of {len(items)} history items are not in the catalogue and are ignored: {unknown[:10]}"
            )
        return known

    def check_new(self, items: Mapping[str, str]) -> tuple[list[str], list[str]]:
        """Raw ids and normalised texts of items to add; refuses ids already present and empty texts."""
        ids = [str(item) for item in items]
        clashes = [item for item in ids if item in self.index]
        if clashes:
            raise UsageError(f"Items already in the catalogue (use new ids): {clashes[:10]}")
        texts = [" ".join(str(items[item]).split()) for item in items]
        empty = [item for item, text in zip(ids, texts) if not text]
        if empty:
            raise UsageError(f"New items need text to get a semantic ID; these have none: {empty[:10]}")
        return ids, texts

    def append(self, ids: Sequence[str], texts: Sequence[str]) -> None:
        for item, text in zip(ids, texts):
            self.index[item] = len(self.tokens)
            self.tokens.append(item)
            self.texts.append(text)


class UserIndex:
    """Raw user ids -> internal ids, with an error that says what to do instead."""

    def __init__(self, tokens: Sequence[str], dataset_name: str) -> None:
        self.tokens, self.dataset_name = list(tokens), dataset_name
        self.index = {token: internal for internal, token in enumerate(self.tokens)}

    def internal_id(self, user: str) -> int:
        uid = self.index.get(str(user))
        if uid is None or uid == 0:
            examples = ", ".join(repr(t) for t in self.tokens[1:4])
            raise UnknownIdError(
                f"User '{user}' is not in dataset '{self.dataset_name}' ({len(self.tokens) - 1} users, e.g. "
                f"{examples}). Check the raw id, or recommend from items with history=[...] (--history=a,b,c)."
            )
        return uid


def load_trained_model(
    checkpoint: str | os.PathLike, dataset: str | None = None, data_path: str | None = None
) -> tuple[Any, Any, Any, Any]:
    """(config, model with the checkpoint's weights, dataset, training dataset), rebuilt as the run built them.

    Reads the checkpoint only; nothing is written to it. RecBole checkpoints pickle their Config, so
    this unpickles: load checkpoints you trust (your own runs).
    """
    config, model, data, (train_data, _, _) = rebuild_run(checkpoint, dataset, data_path)
    return config, model, data, train_data.dataset


def rebuild_run(
    checkpoint: str | os.PathLike, dataset: str | None = None, data_path: str | None = None
) -> tuple[Any, Any, Any, tuple[Any, Any, Any]]:
    """(config, model with the checkpoint's weights, dataset, (train, valid, test) data loaders)."""
    from recbole.data import create_dataset, data_preparation
    from recbole.utils import get_model, init_seed

    path = Path(checkpoint)
    if not path.is_file():
        raise MissingInputError(
            f"Checkpoint {path} does not exist. Training writes checkpoints to checkpoint_dir (default saved/); "
            "pass one of those files as --checkpoint."
        )
    saved = load_checkpoint(path, required=("config", "state_dict"))
    if "format" in saved:  # a training state (trainer.py), not a model checkpoint
        raise CheckpointError(
            f"{path} is a training state for resuming, not a model checkpoint: use the run's best "
            f"checkpoint, {saved.get('saved_model_file')}."
        )
    config = saved["config"]
    trained_on, trained_path = config["dataset"], config["data_path"]
    if dataset or data_path:
        config["dataset"] = dataset or trained_on
        config["data_path"] = os.path.join(data_path or os.path.dirname(trained_path), config["dataset"])
    if not torch.cuda.is_available():
        config["device"], config["use_gpu"] = torch.device("cpu"), False
    init_seed(config["seed"], config["reproducibility"])
    data = create_dataset(config)
    loaders = data_preparation(config, data)
    init_seed(config["seed"], config["reproducibility"])
    model = get_model(config["model"])(config, loaders[0]._dataset).to(config["device"])

    mismatch = state_mismatch(model.state_dict(), saved["state_dict"])
    if mismatch:
        raise UsageError(
            f"Checkpoint {path} was trained on dataset '{trained_on}' ({trained_path}) and does not fit "
            f"dataset '{config['dataset']}' ({config['data_path']}, {data.item_num - 1} items): {mismatch}. "
            f"Use the dataset it was trained on, or train {config['model']} on '{config['dataset']}' first."
        )
    model.load_state_dict(saved["state_dict"])
    model.load_other_parameter(saved.get("other_parameter"))
    return config, model, data, tuple(loaders)


def encode_new_items(model: Any, config: Any, texts: Sequence[str]) -> torch.Tensor:
    """Semantic IDs (n, m) of new item texts: the run's frozen text encoder and its stored OPQ."""
    if not isinstance(model, SemanticIDRecommender):
        raise UsageError(
            f"{config['model']} learns one embedding per training item, so it cannot score items added "
            "after training. Only semantic-ID models (ACERec, RPG) can add items without retraining."
        )
    quantiser = OPQQuantiser.from_array(model.sid_quantiser.cpu().numpy(), model.num_digits, model.codebook_size)
    embeddings = encode_texts(list(texts), SemanticIDSettings.from_config(config))
    return torch.as_tensor(quantiser.encode(embeddings), device=model.item_codes.device)


def top_items(scores: np.ndarray, topk: int, first_new: int, new_item_slots: int = 0) -> np.ndarray:
    """Internal ids of the k best finite scores; with ``new_item_slots``, up to that many of the k places
    go to the best items from ``first_new`` on (added after training), the rest to the others."""
    order = np.argsort(-scores, kind="stable")
    order = order[np.isfinite(scores[order])]
    top = order[:topk]
    if new_item_slots > 0 and len(scores) > first_new:
        is_new = order >= first_new
        new = order[is_new][: min(new_item_slots, topk)]
        top = np.concatenate([order[~is_new][: topk - len(new)], new])
        top = top[np.argsort(-scores[top], kind="stable")]
    return top


class Recommender:
    """A trained model and its dataset, addressed by raw user and item ids.

    The pieces: ``load_trained_model`` (checkpoint -> model and dataset), ``Catalogue`` and
    ``UserIndex`` (raw <-> internal ids, texts), ``encode_new_items`` (items added after training)
    and ``top_items`` (ranking with optional slots for new items); this class joins them to a user's
    history and the model's scores.
    """

    def __init__(self, config: Any, model: Any, dataset: Any, train_dataset: Any) -> None:
        self.config, self.model, self.dataset = config, model.eval(), dataset
        self.logger = getLogger()
        self.uid_field, self.iid_field = dataset.uid_field, dataset.iid_field
        self.users = UserIndex(dataset.field2id_token[self.uid_field], config["dataset"])
        tokens = list(dataset.field2id_token[self.iid_field])
        self.catalogue = Catalogue(tokens, self._item_texts(len(tokens)))
        self.sequential = hasattr(model, "ITEM_SEQ")
        self.popularity = training_counts(train_dataset, len(tokens))

    @classmethod
    def from_checkpoint(
        cls, checkpoint: str | os.PathLike, dataset: str | None = None, data_path: str | None = None
    ) -> Recommender:
        """Rebuild the run's dataset (optionally another ``dataset`` / ``data_path``) and load the weights."""
        return cls(*load_trained_model(checkpoint, dataset, data_path))

    @property
    def item_tokens(self) -> list[str]:
        return self.catalogue.tokens

    def _item_texts(self, n_items: int) -> list[str]:
        fields = tuple(SemanticIDSettings.from_config(self.config).text_fields)
        try:
            texts, _ = item_texts(self.dataset, fields)
        except SemanticIDError:  # a RecBole model trained without item text: show ids only
            texts = [""] * n_items
        return texts

    # ------------------------------------------------------------------------------------- recommend

    def recommend(
        self,
        user: str | None = None,
        history: Sequence[str] | None = None,
        topk: int = 10,
        exclude_seen: bool = True,
        new_item_slots: int = 0,
    ) -> list[Recommendation]:
        """Top-k items for a known ``user`` (their whole history) or for a ``history`` of raw item ids.

        Items added after training have code combinations the model never produced as targets, so they
        score below the best-known items and rarely reach the top k on their own (measured in the
        README). ``new_item_slots`` reserves that many of the k places for the best-scoring new items
        (TIGER's cold-start allowance); 0 ranks purely by score.
        """
        if (user is None) == (history is None):
            raise UsageError("Give exactly one of user (a raw user id) or history (raw item ids).")
        if user is not None:
            uid = self.user_id(user)
            items, seen = self.user_history(uid)
        else:
            if not self.sequential:
                raise UsageError(
                    f"{self.config['model']} scores known users, not item histories: pass user= (--user=)."
                )
            uid, items = 0, self.catalogue.internal_ids(history)
            seen = items
        scores = self.scores(uid, items)
        if exclude_seen and len(seen):
            scores[np.asarray(seen)] = -np.inf
        scores[0] = -np.inf  # padding
        top = top_items(scores, topk, self.catalogue.trained, new_item_slots)
        catalogue = self.catalogue
        return [
            Recommendation(rank, catalogue.tokens[i], float(scores[i]), catalogue.texts[i], catalogue.is_new(i))
            for rank, i in enumerate(top, 1)
        ]

    def user_id(self, user: str) -> int:
        return self.users.internal_id(user)

    def user_history(self, uid: int) -> tuple[list[int], list[int]]:
        """(last items in time order, every item the user interacted with) as internal ids."""
        inter = self.dataset.inter_feat
        rows = (inter[self.uid_field] == uid).nonzero(as_tuple=True)[0]
        if len(rows) == 0:
            return [], []
        targets = inter[self.iid_field][rows]
        if not self.sequential:
            return targets.tolist(), torch.unique(targets).tolist()
        lists = inter[self.model.ITEM_SEQ][rows]
        lengths = inter[self.model.ITEM_SEQ_LEN][rows]
        # RecBole's augmented rows run in time order; lengths cap at MAX_ITEM_LIST_LENGTH, so take the
        # last of the longest rows: the latest prefix + its target
        last = len(lengths) - 1 - int(torch.argmax(lengths.flip(0)))
        history = lists[last, : int(lengths[last])].tolist() + [int(targets[last])]
        seen = torch.unique(torch.cat([targets, lists.flatten()]))
        return history, seen[seen > 0].tolist()

    def scores(self, uid: int, items: list[int]) -> np.ndarray:
        """Scores over the catalogue (numpy, float64); popularity when there is no history to go on."""
        from recbole.data.interaction import Interaction

        if self.sequential and not items:
            self.logger.warning("No known history items: ranking by training popularity instead.")
            popularity = np.zeros(len(self.catalogue))  # items added after training count 0
            popularity[: len(self.popularity)] = self.popularity
            return popularity
        fields: dict[str, torch.Tensor] = {self.uid_field: torch.tensor([uid])}
        if self.sequential:
            items = items[-self.model.max_seq_length :]
            sequence = torch.zeros(1, self.model.max_seq_length, dtype=torch.long)
            sequence[0, : len(items)] = torch.tensor(items)
            fields[self.model.ITEM_SEQ] = sequence
            fields[self.model.ITEM_SEQ_LEN] = torch.tensor([len(items)])
        with torch.no_grad():
            scores = self.model.full_sort_predict(Interaction(fields).to(self.config["device"]))
        return scores.reshape(-1).double().cpu().numpy()

    # ----------------------------------------------------------------------------------------- new items

    def add_items(self, items: Mapping[str, str]) -> list[str]:
        """Add items unseen in training (raw id -> text): encoded with the run's frozen text encoder and
        OPQ, appended to the catalogue and scored exactly like the rest. Semantic-ID models only."""
        ids, texts = self.catalogue.check_new(items)
        if not ids:
            return []
        codes = encode_new_items(self.model, self.config, texts)
        self.model.item_codes = torch.cat([self.model.item_codes, codes])
        self.model.n_items = len(self.model.item_codes)
        self.catalogue.append(ids, texts)
        self.logger.info(f"Added {len(ids)} new items; the catalogue now has {len(self.catalogue) - 1}.")
        return ids

    def add_items_from_file(self, path: str | os.PathLike) -> list[str]:
        """Read new items from a RecBole atomic ``.item`` file (see ``read_new_items``) and add them."""
        fields = SemanticIDSettings.from_config(self.config).text_fields
        return self.add_items(read_new_items(path, self.iid_field, fields))


def read_new_items(path: str | os.PathLike, id_field: str, text_fields: Sequence[str]) -> dict[str, str]:
    """Raw id -> text from a tab-separated file with RecBole's ``name:type`` header.

    The text is built like the training items' text: the run's ``sid_text_fields`` joined by spaces; a
    file without those columns may give a single ``text`` column instead.
    """
    import pandas as pd

    path = Path(path)
    if not path.is_file():
        raise MissingInputError(f"New-items file {path} does not exist.")
    frame = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)
    frame.columns = [column.split(":")[0] for column in frame.columns]
    if id_field not in frame:
        raise UsageError(f"{path} has no '{id_field}' column (header: {list(frame.columns)}); add '{id_field}:token'.")
    columns = [f for f in text_fields if f in frame]
    if len(columns) < len(text_fields):
        if "text" not in frame:
            missing = [f for f in text_fields if f not in frame]
            raise UsageError(
                f"{path} lacks the text fields {missing} this run was trained with (sid_text_fields "
                f"{list(text_fields)}); header: {list(frame.columns)}. Add those columns, or one 'text' column."
            )
        columns = ["text"]
    texts = frame[columns].apply(lambda row: " ".join(" ".join(v.split()) for v in row if v.strip()), axis=1)
    duplicated = frame[id_field][frame[id_field].duplicated()].tolist()
    if duplicated:
        raise UsageError(f"{path} lists these item ids more than once: {duplicated[:10]}")
    return dict(zip(frame[id_field], texts))


def training_counts(train_dataset: Any, n_items: int) -> np.ndarray:
    """Occurrences of each item in the training split. Sequential datasets hold one sample per prefix,
    whose targets miss each user's first item: that item is the history of the one-item prefixes."""
    counts = getattr(train_dataset, "item_train_counts", None)
    if counts is None:
        inter = train_dataset.inter_feat
        counts = np.bincount(inter[train_dataset.iid_field].numpy(), minlength=n_items)
        list_field = getattr(train_dataset, "item_id_list_field", None)
        if list_field in inter:
            firsts = inter[list_field][inter[train_dataset.item_list_length_field] == 1, 0].numpy()
            counts = counts + np.bincount(firsts, minlength=n_items)
    return np.asarray(counts, dtype=np.float64)[:n_items]


def state_mismatch(expected: Mapping[str, torch.Tensor], saved: Mapping[str, torch.Tensor]) -> str | None:
    """Why a saved state dict cannot belong to this model and dataset, or None when it fits."""
    missing = [k for k in expected if k not in saved]
    if missing:
        return f"the checkpoint lacks {missing[:3]}"
    for key, tensor in expected.items():
        if saved[key].shape != tensor.shape:
            return f"'{key}' has shape {tuple(saved[key].shape)} in the checkpoint but {tuple(tensor.shape)} here"
    if "item_codes" in expected and not torch.equal(expected["item_codes"].cpu(), saved["item_codes"].cpu()):
        return "the items' semantic IDs differ (another catalogue, or other sid_* settings)"
    return None


def print_recommendations(recommendations: list[Recommendation], out: Any = None) -> None:
    out = out or sys.stdout
    width = max([len(r.item) for r in recommendations] + [4])
    print(f"{'rank':>4}  {'item':<{width}}  {'score':>9}  text", file=out)
    for r in recommendations:
        flag = " [new]" if r.new else ""
        print(f"{r.rank:>4}  {r.item:<{width}}  {r.score:>9.3f}  {r.text[:80]}{flag}", file=out)


def main(argv: list[str] | None = None) -> list[Recommendation]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="a .pth file written by training (saved/...)")
    parser.add_argument("--user", default=None, help="raw user id (as in the .inter file)")
    parser.add_argument("--history", default=None, help="comma-separated raw item ids, oldest first")
    parser.add_argument("--topk", type=int, default=10)
    parser.add_argument("--include_seen", action="store_true", help="also recommend items already interacted with")
    parser.add_argument("--new_items", default=None, help="tab-separated .item file of items added after training")
    parser.add_argument("--new_item_slots", type=int, default=0, help="places of the top k kept for new items")
    parser.add_argument("--dataset", default=None, help="rebuild another dataset than the checkpoint's")
    parser.add_argument("--data_path", default=None, help="where the dataset folder lives, if it moved")
    parser.add_argument("--debug", action="store_true", help="show the traceback of usage errors too")
    args = parser.parse_args(argv)
    if (args.user is None) == (args.history is None):
        parser.error("give exactly one of --user or --history")
    if args.topk < 1:
        parser.error(f"--topk={args.topk}: give a positive number of recommendations")
    with usage_errors_exit("recommend", args.debug):
        return _recommend(args)


def _recommend(args: argparse.Namespace) -> list[Recommendation]:
    recommender = Recommender.from_checkpoint(args.checkpoint, args.dataset, args.data_path)
    if args.new_items:
        added = recommender.add_items_from_file(args.new_items)
        print(f"added {len(added)} new items from {args.new_items}")
    history = [h for h in args.history.split(",") if h] if args.history is not None else None
    recommendations = recommender.recommend(
        args.user, history, args.topk, exclude_seen=not args.include_seen, new_item_slots=args.new_item_slots
    )
    target = f"user {args.user}" if args.user is not None else f"history {history}"
    print(f"{recommender.config['model']} on {recommender.config['dataset']}: top {len(recommendations)} for {target}")
    print_recommendations(recommendations)
    return recommendations


if __name__ == "__main__":
    main()
