"""Shared base of semantic-ID sequential recommenders: codes, token table, digit heads, exact scoring."""

from __future__ import annotations

from typing import Any

import torch
from recbole.model.abstract_recommender import SequentialRecommender
from recbole.utils import InputType

from acerec_recbole.data import TARGET_SEQ_FIELD, SemanticIDDataset
from acerec_recbole.model.layers import (
    ParallelDigitHeads,
    SemanticTokenEmbedding,
    TransformerEncoder,
    holistic_scores,
    multi_token_prediction_loss,
)


class SemanticIDRecommender(SequentialRecommender):
    """Items are tuples of m codes; the model predicts the next item's m codes in parallel.

    Subclasses implement ``forward(item_seq, item_seq_len) -> (B, L, d)``: the state after each history
    item, which predicts the item that follows it. Training uses every position of a window
    (``TARGET_SEQ_FIELD`` from SemanticIDDataset); scoring is exact over the whole catalogue.
    """

    input_type = InputType.POINTWISE
    dataset_class = SemanticIDDataset

    def __init__(self, config: Any, dataset: Any) -> None:
        super().__init__(config, dataset)
        if getattr(dataset, "semantic_ids", None) is None:
            raise ValueError(
                f"{config['model']} needs semantic IDs, but dataset '{config['dataset']}' was built as "
                f"{type(dataset).__name__}. Build it with SemanticIDDataset (import acerec_recbole before "
                "recbole's create_dataset so the model's dataset class is registered)."
            )
        codes = dataset.semantic_ids
        self.hidden_size = config["hidden_size"]
        self.num_digits = codes.shape[1]
        self.codebook_size = config["sid_codebook_size"]
        self.train_length_buckets = max(1, int(config["train_length_buckets"] or 1))
        self.register_buffer("item_codes", codes.clone())
        # the trained OPQ travels with the checkpoint: items added after training get codes from it
        self.register_buffer("sid_quantiser", torch.as_tensor(dataset.semantic_quantiser.to_array()))
        self.tokens = SemanticTokenEmbedding(self.num_digits, self.codebook_size, self.hidden_size)
        self.heads = ParallelDigitHeads(self.num_digits, self.hidden_size, config["mtp_temperature"])

    def _encoder(self, config: Any) -> TransformerEncoder:
        return TransformerEncoder(
            config["n_layers"],
            self.hidden_size,
            config["n_heads"],
            config["inner_size"],
            config["hidden_dropout_prob"],
            config["attn_dropout_prob"],
        )

    # ------------------------------------------------------------------------------------------ training

    def training_states(self, interaction: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """States (N, d) and next-item targets (N,) at every non-padding training position.

        Short and long windows share a batch, so the batch is sorted by length and cut into
        ``train_length_buckets`` chunks, each trimmed to its own longest sequence: attention cost is
        quadratic in the padded length, and most windows are short. Nothing in the encoder mixes
        sequences, so the states equal those of one padded pass. Targets are per position
        (whole-sequence windows); batches of RecBole's per-prefix samples (no target list) train on
        the last position.
        """
        lengths = interaction[self.ITEM_SEQ_LEN]
        item_seq = interaction[self.ITEM_SEQ]
        if TARGET_SEQ_FIELD in interaction:
            targets = interaction[TARGET_SEQ_FIELD]
        else:
            targets = torch.zeros_like(item_seq)
            targets[torch.arange(len(lengths), device=lengths.device), lengths - 1] = interaction[self.POS_ITEM_ID]
        order = torch.argsort(lengths, descending=True)
        width = targets.shape[1]
        states, positions = [], []
        for chunk in torch.tensor_split(order, min(self.train_length_buckets, len(order))):
            longest = int(lengths[chunk[0]])
            valid = targets[chunk, :longest] > 0
            states.append(self.forward(item_seq[chunk, :longest], lengths[chunk])[valid])
            rows, cols = valid.nonzero(as_tuple=True)
            positions.append(chunk[rows] * width + cols)
        restore = torch.argsort(torch.cat(positions))  # back to the batch's row-major order
        return torch.cat(states)[restore], targets.flatten()[torch.cat(positions)[restore]]

    def token_loss(self, states: torch.Tensor, target_items: torch.Tensor) -> torch.Tensor:
        """Multi-token prediction loss of states (N, d) against items (N,)."""
        logits = self.heads(states, self.tokens.table())
        return multi_token_prediction_loss(logits, self.item_codes[target_items])

    # --------------------------------------------------------------------------------------- inference

    def user_states(self, interaction: Any) -> torch.Tensor:
        """State after each user's last history item (B, d), padding trimmed per batch."""
        lengths = interaction[self.ITEM_SEQ_LEN]
        item_seq = interaction[self.ITEM_SEQ][:, : int(lengths.max())]
        return self.gather_indexes(self.forward(item_seq, lengths), lengths - 1)

    def digit_log_probs(self, states: torch.Tensor) -> torch.Tensor:
        """(B, d) -> (B, m, M) per-digit log-probabilities of the next item's codes."""
        return torch.log_softmax(self.heads(states, self.tokens.table()), dim=-1)

    def predict(self, interaction: Any) -> torch.Tensor:
        log_probs = self.digit_log_probs(self.user_states(interaction))
        codes = self.item_codes[interaction[self.ITEM_ID]]  # (B, m)
        return log_probs.gather(2, codes.unsqueeze(-1)).squeeze(-1).sum(-1)

    def full_sort_predict(self, interaction: Any) -> torch.Tensor:
        return holistic_scores(self.digit_log_probs(self.user_states(interaction)), self.item_codes)
