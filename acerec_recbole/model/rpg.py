r"""RPG (Hou et al., KDD 2025): each item is the mean of its m semantic-token embeddings; a causal
Transformer over items predicts the next item's m codes in parallel. Our in-house baseline: same
semantic IDs, heads, training windows and exact scoring as ACERec, no merger, no Intent Token, no ISA.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from acerec_recbole.model.abstract import SemanticIDRecommender


class RPG(SemanticIDRecommender):
    def __init__(self, config: Any, dataset: Any) -> None:
        super().__init__(config, dataset)
        self.position_embedding = nn.Embedding(self.max_seq_length, self.hidden_size)
        nn.init.normal_(self.position_embedding.weight, std=self.position_init_std)
        self._build_sequence_encoder(config, block_size=1, anchor_is_separate=False)

    def item_inputs(self, items: torch.Tensor) -> torch.Tensor:
        """Mean-pooled token embeddings (U, 1, d): RPG's item representation."""
        return self.tokens(self.item_codes[items]).mean(dim=-2).unsqueeze(1)

    def position_inputs(self, length: int) -> torch.Tensor:
        return self.position_embedding.weight[:length, None]

    def calculate_loss(self, interaction: Any) -> torch.Tensor:
        return self.token_loss(*self.training_states(interaction))
