"""Data pipeline pieces for semantic-ID models (a RecBole dataset class)."""

from acerec_recbole.data.dataset import TARGET_SEQ_FIELD, SemanticIDDataset

__all__ = ["TARGET_SEQ_FIELD", "SemanticIDDataset"]
