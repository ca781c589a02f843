r"""RPG (Hou et al., KDD 2025): each item is the mean of its m semantic-token embeddings; a causal
Transformer over items predicts the next item's m codes in parallel. Our in-house baseline: same
semantic IDs, heads, training windows and exact scoring as ACERec, no merger, no Intent Token, no ISA.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from acerec_recbole.model.abstract import SemanticIDRecommender
from acerec_recbole.model.layers import block_causal_mask


class RPG(SemanticIDRecommender):
    def __init__(self, config: Any, dataset: Any) -> None:
        super().__init__(config, dataset)
        self.position_embedding = nn.Embedding(self.max_seq_length, self.hidden_size)
        nn.init.normal_(self.position_embedding.weight, std=0.02)
        self.input_norm = nn.LayerNorm(self.hidden_size)
        self.input_dropout = nn.Dropout(config["hidden_dropout_prob"])
        self.encoder = self._encoder(config)
        self.output_norm = nn.LayerNorm(self.hidden_size)
        self.register_buffer("causal_mask", block_causal_mask(self.max_seq_length, 1, False), persistent=False)

    def item_vectors(self, items: torch.Tensor) -> torch.Tensor:
        """Mean-pooled token embeddings (..., d): RPG's item representation."""
        return self.tokens(self.item_codes[items]).mean(dim=-2)

    def forward(self, item_seq: torch.Tensor, item_seq_len: torch.Tensor) -> torch.Tensor:
        """(B, L) item ids -> (B, L, d) states; state t predicts item t+1."""
        length = item_seq.shape[1]
        items, inverse = torch.unique(item_seq, return_inverse=True)
        x = self.item_vectors(items)[inverse] + self.position_embedding.weight[:length]
        x = self.encoder(self.input_dropout(self.input_norm(x)), self.causal_mask[:length, :length])
        return self.output_norm(x)

    def calculate_loss(self, interaction: Any) -> torch.Tensor:
        return self.token_loss(*self.training_states(interaction))
