"""RecBole dataset for semantic-ID models: semantic IDs + whole-sequence training windows.

RecBole's SequentialDataset builds one sample per prefix and splits them (leave-one-out by default);
validation and test samples are kept exactly as RecBole makes them. Only the *training* split is
rewritten: each user's training sequence x_0..x_N is cut into windows of at most MAX_ITEM_LIST_LENGTH
inputs, with the next item as target at every position (teacher forcing). Every training target
appears exactly once per epoch, including for users longer than MAX_ITEM_LIST_LENGTH, and an epoch
costs one forward pass per window instead of one per prefix.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from recbole.data.dataset import SequentialDataset
from recbole.data.interaction import Interaction
from recbole.utils import FeatureSource, FeatureType

from acerec_recbole.distributed import is_distributed
from acerec_recbole.semantic_ids import OPQQuantiser, SemanticIDSettings, build_semantic_ids

# Per-position next-item targets of a training window (same layout as ITEM_SEQ, 0 = padding).
TARGET_SEQ_FIELD = "target_item_id_list"


class SemanticIDDataset(SequentialDataset):
    """SequentialDataset whose items carry semantic IDs (``semantic_ids``: n_items x m, row 0 = padding).

    Also provides ``item_train_counts`` (occurrences of each item in the training sequences), used for
    popularity correction, and ``semantic_quantiser``, which gives items added after training their codes.
    """

    semantic_ids: torch.Tensor
    item_train_counts: torch.Tensor
    semantic_id_report: dict[str, Any]
    semantic_quantiser: OPQQuantiser

    def build(self) -> list[SequentialDataset]:
        datasets = super().build()
        train = datasets[0]
        sequences = user_training_sequences(train)
        train_items = np.concatenate(list(sequences.values())) if sequences else np.zeros(0, dtype=np.int64)

        settings = SemanticIDSettings.from_config(self.config)
        with first_process_of_each_node(self.config):
            codes, report, quantiser = build_semantic_ids(self, train_items, settings, self.logger)
        counts = np.bincount(train_items, minlength=self.item_num)[: self.item_num]
        windows = training_windows(
            sequences,
            self.max_item_list_len,
            self.uid_field,
            self.iid_field,
            self.item_id_list_field,
            self.item_list_length_field,
        )
        self.set_field_property(
            TARGET_SEQ_FIELD, FeatureType.TOKEN_SEQ, FeatureSource.INTERACTION, self.max_item_list_len
        )
        datasets[0] = train.copy(windows)
        self.logger.info(
            f"Whole-sequence training: {len(train.inter_feat)} per-prefix samples -> {len(windows)} windows "
            f"({int((windows[TARGET_SEQ_FIELD] > 0).sum())} targets)."
        )
        for part in [self, *datasets]:
            part.semantic_ids = torch.as_tensor(codes, dtype=torch.long)
            part.item_train_counts = torch.as_tensor(counts, dtype=torch.long)
            part.semantic_id_report = report
            part.semantic_quantiser = quantiser
        return datasets


@contextlib.contextmanager
def first_process_of_each_node(config: Any) -> Iterator[None]:
    """Distributed, each node's first process runs the body (building the semantic-ID cache) while the
    others wait; then they run it too and find the cache ready: no rank encodes the catalogue twice."""
    if not is_distributed(config):
        yield
        return
    first = int(config["local_rank"]) == 0
    if not first:
        torch.distributed.barrier()
    yield
    if first:
        torch.distributed.barrier()


def user_training_sequences(train: SequentialDataset) -> dict[int, np.ndarray]:
    """Each user's training sequence x_0..x_N, rebuilt from RecBole's per-prefix training samples.

    RecBole's splits keep a user's samples contiguous and in time order, the first with a history of
    one item; anything else (e.g. a random split) cannot be turned back into sequences.
    """
    inter = train.inter_feat
    if len(inter) == 0:
        return {}
    uids = inter[train.uid_field].numpy()
    targets = inter[train.iid_field].numpy()
    first_items = inter[train.item_id_list_field][:, 0].numpy()
    lengths = inter[train.item_list_length_field].numpy()
    starts = np.flatnonzero(np.r_[True, uids[1:] != uids[:-1]])
    ends = np.r_[starts[1:], len(uids)]
    if len(np.unique(uids[starts])) != len(starts) or np.any(lengths[starts] != 1):
        raise ValueError(
            "Semantic-ID models train on whole user sequences and need a temporal split whose training part "
            "is each user's earliest interactions (eval_args: order TO, split LS/RS/TS grouped by user). "
            f"Got eval_args={train.config['eval_args']}."
        )
    return {
        int(uids[s]): np.concatenate([first_items[s : s + 1], targets[s:e]]).astype(np.int64)
        for s, e in zip(starts, ends)
    }


def training_windows(
    sequences: dict[int, np.ndarray], max_len: int, uid_field: str, iid_field: str, seq_field: str, len_field: str
) -> Interaction:
    """Cut sequences into windows of <= max_len inputs, each position predicting the next item.

    Windows are cut from the end, so the most recent items get the longest context; targets never
    repeat across windows.
    """
    uids, inputs, targets, lengths = [], [], [], []
    for uid, seq in sequences.items():
        end = len(seq) - 1
        while end > 0:
            start = max(0, end - max_len)
            length = end - start
            row_in = np.zeros(max_len, dtype=np.int64)
            row_out = np.zeros(max_len, dtype=np.int64)
            row_in[:length] = seq[start:end]
            row_out[:length] = seq[start + 1 : end + 1]
            uids.append(uid)
            inputs.append(row_in)
            targets.append(row_out)
            lengths.append(length)
            end = start
    inputs_t = torch.as_tensor(np.stack(inputs)) if inputs else torch.zeros((0, max_len), dtype=torch.long)
    targets_t = torch.as_tensor(np.stack(targets)) if targets else torch.zeros((0, max_len), dtype=torch.long)
    lengths_t = torch.as_tensor(np.asarray(lengths, dtype=np.int64))
    last_target = targets_t[torch.arange(len(lengths_t)), (lengths_t - 1).clamp(min=0)]
    return Interaction(
        {
            uid_field: torch.as_tensor(np.asarray(uids, dtype=np.int64)),
            seq_field: inputs_t,
            len_field: lengths_t,
            TARGET_SEQ_FIELD: targets_t,
            iid_field: last_target,
        }
    )
