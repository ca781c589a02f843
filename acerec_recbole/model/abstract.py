"""Shared base of semantic-ID sequential recommenders: codes, token table, sequence encoder, digit heads,
exact scoring, and the fast paths (length classes, read-out-only last layer, catalogue cache) both use.
"""

from __future__ import annotations

from typing import Any

import torch
from recbole.model.abstract_recommender import SequentialRecommender
from recbole.utils import InputType
from torch import nn

from acerec_recbole.data import TARGET_SEQ_FIELD, SemanticIDDataset
from acerec_recbole.model.layers import (
    ParallelDigitHeads,
    SemanticTokenEmbedding,
    TransformerEncoder,
    block_causal_mask,
    code_log_prior,
    holistic_scores,
    length_classes,
    multi_token_prediction_loss,
)

# The catalogue's per-item encoder inputs are cached for evaluation only while they stay this small.
CATALOGUE_CACHE_BYTES = 512 * 2**20


class SemanticIDRecommender(SequentialRecommender):
    """Items are tuples of m codes; the model predicts the next item's m codes in parallel.

    Each history item enters the encoder as a block of ``block_size`` vectors (``item_inputs``); the
    last vector of a block is its anchor, whose state predicts the next item. Subclasses build their
    item-side layers, then call ``_build_sequence_encoder``, and define ``item_inputs`` and
    ``position_inputs``. Training uses every position of a window (``TARGET_SEQ_FIELD`` from
    SemanticIDDataset); scoring is exact over the whole catalogue.

    ``plain = True`` switches every fast path off (one padded pass, every position through every
    layer, item inputs recomputed each call): the reference the tests compare the fast paths with.
    """

    input_type = InputType.POINTWISE
    dataset_class = SemanticIDDataset
    plain = False
    # saved with every checkpoint (RecBole's other_parameter): gamma may be annealed during training
    other_parameter_name = ["mtp_temperature"]

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
        # on unless switched off, also for checkpoints saved before the key existed
        self.length_bucketing = config["length_bucketing"] is not False
        self.register_buffer("item_codes", codes.clone())
        # the trained OPQ travels with the checkpoint: items added after training get codes from it
        self.register_buffer("sid_quantiser", torch.as_tensor(dataset.semantic_quantiser.to_array()))
        # std of the token table at initialisation. ACERec's forward pass does not depend on the tokens' scale
        # (LayerNorm at the input, cosine logits at the output), so this sets how far Adam's steps (~ lr per
        # entry) move the tokens relative to their size: at 0.02 and lr 0.0027, about 13 % per step
        std = config["token_init_std"]
        token_std = 0.02 if std is None else float(std)
        self.tokens = SemanticTokenEmbedding(self.num_digits, self.codebook_size, self.hidden_size, token_std)
        # the digit logits' side of the vocabulary: the input table itself (tied, the paper) or a table of its own,
        # so that the tokens an item is read from no longer take every output gradient (94-99 % of the gradient at
        # the start of training on Toys is the tied table's). The heads see it through a cosine, so its init std
        # only sets Adam's step relative to it (default: the input table's)
        self.output_tokens = None
        if config["tie_output_tokens"] is False:
            output_std = config["output_token_init_std"]
            output_std = token_std if output_std is None else float(output_std)
            self.output_tokens = SemanticTokenEmbedding(
                self.num_digits, self.codebook_size, self.hidden_size, output_std
            )
        self.heads = ParallelDigitHeads(self.num_digits, self.hidden_size, config["mtp_temperature"])
        # logit adjustment of the MTP loss (Menon et al., ICLR 2021): train on logits + alpha * log prior of
        # each code, score with the plain logits, so codes common among popular items weigh less at
        # inference (the Toys analysis: rarely seen targets are where ACERec trails SASRec)
        self.mtp_logit_adjustment = float(config["mtp_logit_adjustment"] or 0.0)
        self.register_buffer(
            "code_log_prior",
            code_log_prior(self.item_codes, dataset.item_train_counts, self.codebook_size),
            persistent=False,  # rebuilt from the dataset: checkpoints stay as they were
        )
        # label smoothing of each digit's cross-entropy: an item's score sums m digit log-probabilities, so
        # one over-confident digit can bury an item; smoothing bounds how far a wrong digit pushes its logit
        self.mtp_label_smoothing = float(config["mtp_label_smoothing"] or 0.0)
        self._catalogue_cache: tuple[Any, torch.Tensor] | None = None
        # std of the position embeddings at initialisation: at 0.02 (RecBole's and RPG's habit) they are ~2 %
        # of ACERec's normalised latents, so its encoder starts nearly blind to order
        std = config["position_init_std"]
        self.position_init_std = 0.02 if std is None else float(std)

    @property
    def mtp_temperature(self) -> float:
        """gamma of the digit logits now; the trainer anneals it when ``mtp_temperature_start`` is set."""
        return self.heads.temperature

    @mtp_temperature.setter
    def mtp_temperature(self, value: float) -> None:
        self.heads.temperature = float(value)

    def _build_sequence_encoder(self, config: Any, block_size: int, anchor_is_separate: bool) -> None:
        """Input norm and dropout, the block-causal Transformer and the output norm.

        ``hidden_dropout_prob`` drops encoder inputs, ``attn_dropout_prob`` attention weights and
        ``residual_dropout_prob`` (default: hidden_dropout_prob) the residual and FFN branches;
        ``attn_qk_norm`` normalises each head's queries and keys.
        """
        residual_dropout = config["residual_dropout_prob"]
        if residual_dropout is None:
            residual_dropout = config["hidden_dropout_prob"]
        self.block_size = block_size
        self.input_norm = nn.LayerNorm(self.hidden_size)
        self.input_dropout = nn.Dropout(config["hidden_dropout_prob"])
        self.encoder = TransformerEncoder(
            config["n_layers"],
            hidden_size=self.hidden_size,
            num_heads=config["n_heads"],
            inner_size=config["inner_size"],
            residual_dropout=residual_dropout,
            attn_dropout=config["attn_dropout_prob"],
            qk_norm=bool(config["attn_qk_norm"]),
        )
        self.output_norm = nn.LayerNorm(self.hidden_size)
        self.register_buffer(
            "attention_mask", block_causal_mask(self.max_seq_length, block_size, anchor_is_separate), persistent=False
        )

    def item_inputs(self, items: torch.Tensor) -> torch.Tensor:
        """Items (U,) -> their encoder input blocks (U, block_size, d)."""
        raise NotImplementedError

    def position_inputs(self, length: int) -> torch.Tensor:
        """Position embeddings (length, block_size, d) added to the input blocks."""
        raise NotImplementedError

    # ------------------------------------------------------------------------------------------- encoder

    def forward(self, item_seq: torch.Tensor, item_seq_len: torch.Tensor) -> torch.Tensor:
        """(B, L) item ids -> (B, L, d) anchor states; state t predicts item t+1."""
        items, inverse = torch.unique(item_seq, return_inverse=True)  # each distinct item computed once
        return self.encode(self.item_inputs(items)[inverse])

    def encode(self, blocks: torch.Tensor, readout: torch.Tensor | None = None) -> torch.Tensor:
        """Input blocks (B, L, S, d) -> anchor states (B, L, d), or (B, d) at step ``readout[b]`` only.

        Only anchors are read out, so the last layer is computed at the anchors (or at the one read-out
        position per row); the other positions serve as keys and values.
        """
        batch, length, size, d = blocks.shape
        span = length * size
        x = self.input_dropout(self.input_norm((blocks + self.position_inputs(length)).reshape(batch, span, d)))
        mask = self.attention_mask[:span, :span]
        if self.plain:
            states = self.encoder(x, mask).view(batch, length, size, d)[:, :, -1]
            if readout is not None:
                states = states[torch.arange(batch, device=x.device), readout]
            return self.output_norm(states)
        if readout is not None:
            return self.output_norm(self.encoder(x, mask, (readout * size + size - 1).unsqueeze(1)).squeeze(1))
        anchors = None if size == 1 else torch.arange(size - 1, span, size, device=x.device)
        return self.output_norm(self.encoder(x, mask, anchors))

    def _chunks(self, lengths: torch.Tensor, steps_per_octave: int = 1) -> list[torch.Tensor]:
        """Rows grouped so that each group is padded only to its own longest sequence."""
        if self.plain or not self.length_bucketing:
            return [torch.arange(len(lengths), device=lengths.device)]
        return length_classes(lengths, steps_per_octave)

    # ------------------------------------------------------------------------------------------ training

    def training_states(self, interaction: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """States (N, d) and next-item targets (N,) at every non-padding training position."""
        states, targets, _, _ = self.training_states_and_inputs(interaction)
        return states, targets

    def training_states_and_inputs(
        self, interaction: Any
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """States (N, d) and next-item targets (N,) at every non-padding training position, plus the batch's
        distinct items (U,) and their input blocks (U, S, d), for losses on the item inputs themselves.

        Item inputs (e.g. ACERec's merger) are computed once per distinct item of the batch; the
        sequences then run in power-of-two length classes (``length_bucketing``), each trimmed to its
        own longest sequence: nothing in the encoder mixes sequences, so the states equal those of one
        padded pass. Targets are per position (whole-sequence windows); batches of RecBole's per-prefix
        samples (no target list) train on the last position.
        """
        lengths = interaction[self.ITEM_SEQ_LEN]
        item_seq = interaction[self.ITEM_SEQ]
        if TARGET_SEQ_FIELD in interaction:
            targets = interaction[TARGET_SEQ_FIELD]
        else:
            targets = torch.zeros_like(item_seq)
            targets[torch.arange(len(lengths), device=lengths.device), lengths - 1] = interaction[self.POS_ITEM_ID]
        longest = int(lengths.max())
        item_seq, targets = item_seq[:, :longest], targets[:, :longest]
        items, inverse = torch.unique(item_seq, return_inverse=True)
        inputs = self.item_inputs(items)
        states, positions = [], []
        for chunk in self._chunks(lengths):
            chunk_longest = int(lengths[chunk].max())
            valid = targets[chunk, :chunk_longest] > 0
            states.append(self.encode(inputs[inverse[chunk, :chunk_longest]])[valid])
            rows, cols = valid.nonzero(as_tuple=True)
            positions.append(chunk[rows] * longest + cols)
        positions = torch.cat(positions)
        restore = torch.argsort(positions)  # back to the batch's row-major order
        return torch.cat(states)[restore], targets.flatten()[positions[restore]], items, inputs

    def output_table(self) -> torch.Tensor:
        """(m, M, d) token vectors the digit heads score against: the input table unless untied."""
        return (self.tokens if self.output_tokens is None else self.output_tokens).table()

    def token_loss(self, states: torch.Tensor, target_items: torch.Tensor) -> torch.Tensor:
        """Multi-token prediction loss of states (N, d) against items (N,)."""
        logits = self.heads(states, self.output_table())
        if self.mtp_logit_adjustment:
            logits = logits + self.mtp_logit_adjustment * self.code_log_prior.unsqueeze(1)
        return multi_token_prediction_loss(logits, self.item_codes[target_items], self.mtp_label_smoothing)

    # --------------------------------------------------------------------------------------- inference

    def catalogue_inputs(self) -> torch.Tensor:
        """Every item's input block (n_items, S, d), computed once and reused until a parameter or the
        item codes change (optimiser steps and ``load_state_dict`` bump a tensor's version, ``.to``
        moves its storage, items added for serving replace ``item_codes``)."""
        state = [(t, t.data_ptr(), t._version) for t in (self.item_codes, *self.parameters())]
        cached = self._catalogue_cache
        if (
            cached is None
            or len(cached[0]) != len(state)
            or any(old[0] is not new[0] or old[1:] != new[1:] for old, new in zip(cached[0], state))
        ):
            items = torch.arange(len(self.item_codes), device=self.item_codes.device)
            self._catalogue_cache = cached = (state, self.item_inputs(items))
        return cached[1]

    def _inputs_and_index(self, item_seq: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Item inputs and the index of each history item into them: the catalogue cache in evaluation,
        the batch's distinct items otherwise."""
        if self.uses_catalogue_cache():
            return self.catalogue_inputs(), item_seq
        items, inverse = torch.unique(item_seq, return_inverse=True)
        return self.item_inputs(items), inverse

    def uses_catalogue_cache(self) -> bool:
        """Whether inference reads item inputs from ``catalogue_inputs``: eval mode, no gradient, small enough."""
        small = self.n_items * self.block_size * self.hidden_size * 4 <= CATALOGUE_CACHE_BYTES
        return not self.plain and not self.training and not torch.is_grad_enabled() and small

    def user_states(self, interaction: Any) -> torch.Tensor:
        """State after each user's last history item (B, d), in length classes, read out there only."""
        lengths = interaction[self.ITEM_SEQ_LEN]
        item_seq = interaction[self.ITEM_SEQ][:, : int(lengths.max())]
        inputs, index = self._inputs_and_index(item_seq)
        chunks = self._chunks(lengths, steps_per_octave=2)  # finer at inference: ACERec ~10 % faster here
        states = [
            self.encode(inputs[index[chunk, : int(lengths[chunk].max())]], readout=lengths[chunk] - 1)
            for chunk in chunks
        ]
        return torch.cat(states)[torch.argsort(torch.cat(chunks))]

    def digit_log_probs(self, states: torch.Tensor) -> torch.Tensor:
        """(B, d) -> (B, m, M) per-digit log-probabilities of the next item's codes."""
        return torch.log_softmax(self.heads(states, self.output_table()), dim=-1).transpose(0, 1)

    def token_scores(self, states: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        """Score of one item per state: sum over digits of log p_k(code_k); states (B, d), codes (B, m)."""
        return self.digit_log_probs(states).gather(2, codes.unsqueeze(-1)).squeeze(-1).sum(-1)

    def catalogue_token_scores(self, states: torch.Tensor) -> torch.Tensor:
        """Exact scores of every catalogue item for each state: (B, n_items)."""
        return holistic_scores(self.digit_log_probs(states), self.item_codes)

    def predict(self, interaction: Any) -> torch.Tensor:
        return self.token_scores(self.user_states(interaction), self.item_codes[interaction[self.ITEM_ID]])

    def full_sort_predict(self, interaction: Any) -> torch.Tensor:
        return self.catalogue_token_scores(self.user_states(interaction))
