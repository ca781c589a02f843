r"""ACERec: Attentive Token Merger + Intent Token + dual-granularity loss over long semantic IDs.

Each history item becomes a block [k latents from its m tokens; Intent Token]; a block-causal
Transformer runs over the blocks, the Intent Token of item t predicts item t+1 (m digits in parallel,
MTP loss) and is aligned with the true next item's summary (ISA loss). Exact catalogue scoring.
Method: ../shared/docs/acerec_method.md (Xia et al., arXiv 2602.13573).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from acerec_recbole.model.abstract import SemanticIDRecommender
from acerec_recbole.model.layers import (
    ItemSummary,
    block_causal_mask,
    build_merger,
    intent_semantic_alignment_loss,
    popularity_bias,
)


class ACERec(SemanticIDRecommender):
    r"""Config keys (properties/model/ACERec.yaml): ``num_latents`` k, ``merger`` (attn|mean|mlp|conv),
    ``anchor`` (intent|last), ``isa_weight`` lambda, ``isa_temperature`` tau, ``popularity_beta`` beta,
    ``mtp_temperature`` gamma, plus the Transformer sizes.
    """

    def __init__(self, config: Any, dataset: Any) -> None:
        super().__init__(config, dataset)
        self.num_latents = config["num_latents"]
        self.anchor = config["anchor"]
        if self.anchor not in ("intent", "last"):
            raise ValueError(f"anchor='{self.anchor}' must be 'intent' or 'last'.")
        self.isa_weight = config["isa_weight"]
        self.isa_temperature = config["isa_temperature"]
        self.block_size = self.num_latents + (self.anchor == "intent")

        self.summary = ItemSummary(self.hidden_size)
        self.merger = build_merger(
            config["merger"],
            self.num_digits,
            self.num_latents,
            self.hidden_size,
            config["merger_heads"],
            config["attn_dropout_prob"],
        )
        self.step_embedding = nn.Embedding(self.max_seq_length, self.hidden_size)
        self.slot_embedding = nn.Embedding(self.block_size, self.hidden_size)
        self.input_norm = nn.LayerNorm(self.hidden_size)
        self.input_dropout = nn.Dropout(config["hidden_dropout_prob"])
        self.encoder = self._encoder(config)
        self.output_norm = nn.LayerNorm(self.hidden_size)
        self.register_buffer(
            "block_mask",
            block_causal_mask(self.max_seq_length, self.block_size, self.anchor == "intent"),
            persistent=False,
        )
        self.register_buffer("popularity_bias", popularity_bias(dataset.item_train_counts, config["popularity_beta"]))
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, std=0.02)

    def item_latents(self, items: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Unique items (U,) -> latents (U, k, d) and summaries (U, d)."""
        tokens = self.tokens(self.item_codes[items])
        summary = self.summary(tokens)
        return self.merger(tokens, summary), summary

    def forward(self, item_seq: torch.Tensor, item_seq_len: torch.Tensor) -> torch.Tensor:
        """(B, L) item ids -> (B, L, d) anchor states; state t predicts item t+1."""
        batch, length = item_seq.shape
        items, inverse = torch.unique(item_seq, return_inverse=True)  # each distinct item merged once
        latents, summary = self.item_latents(items)
        block = [latents[inverse]]
        if self.anchor == "intent":
            block.append(summary[inverse].unsqueeze(2))  # the Intent Token starts from the item summary
        x = torch.cat(block, dim=2) + self.step_embedding.weight[:length, None] + self.slot_embedding.weight
        x = self.input_dropout(self.input_norm(x.reshape(batch, length * self.block_size, self.hidden_size)))
        span = length * self.block_size
        x = self.encoder(x, self.block_mask[:span, :span])
        return self.output_norm(x.view(batch, length, self.block_size, self.hidden_size)[:, :, -1])

    def calculate_loss(self, interaction: Any) -> torch.Tensor:
        states, targets = self.training_states(interaction)
        loss = self.token_loss(states, targets)
        if self.isa_weight > 0:
            candidates, target_index = torch.unique(targets, return_inverse=True)
            summaries = self.summary(self.tokens(self.item_codes[candidates]))
            loss = loss + self.isa_weight * intent_semantic_alignment_loss(
                states, summaries, target_index, self.popularity_bias[candidates], self.isa_temperature
            )
        return loss
