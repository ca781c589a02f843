r"""ACERec: Attentive Token Merger + Intent Token + dual-granularity loss over long semantic IDs.

Each history item becomes a block [k latents from its m tokens; Intent Token]; a block-causal
Transformer runs over the blocks, the Intent Token of item t predicts item t+1 (m digits in parallel,
MTP loss) and is aligned with the true next item's summary (ISA loss). Exact catalogue scoring.
Method: ../shared/docs/acerec_method.md (Xia et al., arXiv 2602.13573).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from acerec_recbole.model.abstract import SemanticIDRecommender
from acerec_recbole.model.layers import (
    ItemSummary,
    TokenReconstructor,
    alignment_scores,
    build_merger,
    intent_semantic_alignment_loss,
    popularity_bias,
    reconstruction_loss,
)


class ACERec(SemanticIDRecommender):
    r"""Config keys (properties/model/ACERec.yaml): ``num_latents`` k, ``merger`` (attn|mean|mlp|conv),
    ``anchor`` (intent|last), ``isa_weight`` lambda, ``isa_temperature`` tau, ``popularity_beta`` beta,
    ``mtp_temperature`` gamma, ``isa_score_weight`` w (inference), ``reconstruction_weight`` (the paper's v2
    loss: rebuild each item's tokens from its latents), plus the Transformer sizes.
    """

    def __init__(self, config: Any, dataset: Any) -> None:
        super().__init__(config, dataset)
        self.num_latents = config["num_latents"]
        self.anchor = config["anchor"]
        if self.anchor not in ("intent", "last"):
            raise ValueError(f"anchor='{self.anchor}' must be 'intent' or 'last'.")
        self.isa_weight = config["isa_weight"]
        self.isa_temperature = config["isa_temperature"]
        # inference: MTP score + w * the ISA head's item score phi(h, s_j). 0 is the paper's score; on Toys
        # the ISA head ranks rarely seen targets better than the token score does (results/cpu-quality/)
        self.isa_score_weight = float(config["isa_score_weight"] or 0.0)
        self.block_size = self.num_latents + (self.anchor == "intent")

        # LayerNorm of the raw token embeddings before the summary and the merger: tokens start at
        # std 0.02, where the Linear biases of f_s would make every item look alike (cosine ~1.0)
        self.token_norm = nn.LayerNorm(self.hidden_size) if config["item_token_norm"] else nn.Identity()
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
        self._build_sequence_encoder(config, self.block_size, anchor_is_separate=self.anchor == "intent")
        self.register_buffer("popularity_bias", popularity_bias(dataset.item_train_counts, config["popularity_beta"]))
        self.reconstruction_weight = float(config["reconstruction_weight"] or 0.0)
        if self.reconstruction_weight > 0:  # built last and only when used: other models keep their initial draws
            self.reconstructor = TokenReconstructor(self.num_digits, self.hidden_size, config["merger_heads"])
        self.apply(self._init_weights)

    def _init_weights(self, module: nn.Module) -> None:
        """Embeddings at std 0.02, step and slot at ``position_init_std`` (drawn in the same order, so the
        default gives the same weights as before the key existed)."""
        if isinstance(module, nn.Embedding):
            positions = module is self.step_embedding or module is self.slot_embedding
            nn.init.normal_(module.weight, std=self.position_init_std if positions else 0.02)

    def item_inputs(self, items: torch.Tensor) -> torch.Tensor:
        """Items (U,) -> blocks (U, k [+ 1], d): the k merged latents, then the Intent Token, which
        starts from the item summary."""
        tokens = self.token_norm(self.tokens(self.item_codes[items]))
        summary = self.summary(tokens)
        latents = self.merger(tokens, summary)
        return torch.cat([latents, summary.unsqueeze(1)], dim=1) if self.anchor == "intent" else latents

    def item_summaries(self, items: torch.Tensor) -> torch.Tensor:
        """s_i (U, d): the ISA targets."""
        return self.summary(self.token_norm(self.tokens(self.item_codes[items])))

    def position_inputs(self, length: int) -> torch.Tensor:
        return self.step_embedding.weight[:length, None] + self.slot_embedding.weight

    def calculate_loss(self, interaction: Any) -> torch.Tensor:
        states, targets, items, inputs = self.training_states_and_inputs(interaction)
        loss = self.token_loss(states, targets)
        if self.reconstruction_weight > 0:
            real = items > 0  # not the padding item
            tokens = self.token_norm(self.tokens(self.item_codes[items[real]]))  # what the merger saw
            rebuilt = self.reconstructor(inputs[real, : self.num_latents])
            loss = loss + self.reconstruction_weight * reconstruction_loss(rebuilt, tokens)
        if self.isa_weight > 0:
            candidates, target_index = torch.unique(targets, return_inverse=True)
            summaries = self.item_summaries(candidates)
            loss = loss + self.isa_weight * intent_semantic_alignment_loss(
                states, summaries, target_index, self.popularity_bias[candidates], self.isa_temperature
            )
        return loss

    def predict(self, interaction: Any) -> torch.Tensor:
        states = self.user_states(interaction)
        items = interaction[self.ITEM_ID]
        scores = self.token_scores(states, self.item_codes[items])
        if self.isa_score_weight:
            phi = F.cosine_similarity(states, self.item_summaries(items), dim=-1) / self.isa_temperature
            scores = scores + self.isa_score_weight * (phi - self._popularity_bias(items))
        return scores

    def full_sort_predict(self, interaction: Any) -> torch.Tensor:
        states = self.user_states(interaction)
        scores = self.catalogue_token_scores(states)
        if self.isa_score_weight:
            items = torch.arange(len(self.item_codes), device=states.device)
            summaries, bias = self.catalogue_summaries(), self._popularity_bias(items)
            scores = scores + self.isa_score_weight * alignment_scores(states, summaries, bias, self.isa_temperature)
        return scores

    def catalogue_summaries(self) -> torch.Tensor:
        """s_j of every item (n_items, d): the Intent Tokens of the cached catalogue inputs when inference
        uses that cache (they are the summaries), computed otherwise."""
        if self.anchor == "intent" and self.uses_catalogue_cache():
            return self.catalogue_inputs()[:, -1]
        return self.item_summaries(torch.arange(len(self.item_codes), device=self.item_codes.device))

    def _popularity_bias(self, items: torch.Tensor) -> torch.Tensor:
        """b_j of the items; 0 for items added after training (seen 0 times, as an item seen once)."""
        known = items < len(self.popularity_bias)
        return torch.where(known, self.popularity_bias[items.clamp(max=len(self.popularity_bias) - 1)], 0.0)
