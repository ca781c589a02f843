"""Models of this package, and their registration with RecBole's own look-ups.

Registration lets RecBole's unmodified utilities (``get_model``, ``get_trainer``, ``create_dataset``,
``load_data_and_model``) find our models, their trainer and their dataset class by name.
"""

from __future__ import annotations

import sys

from acerec_recbole.model.acerec import ACERec
from acerec_recbole.model.rpg import RPG

MODELS: dict[str, type] = {"ACERec": ACERec, "RPG": RPG}


def register_with_recbole() -> None:
    """Expose each model where RecBole's name-based look-ups search for it."""
    import recbole.data.dataset as recbole_datasets
    import recbole.trainer as recbole_trainers

    from acerec_recbole.trainer import SemanticIDTrainer

    for name, model_class in MODELS.items():
        setattr(recbole_trainers, f"{name}Trainer", SemanticIDTrainer)
        sys.modules[f"recbole.model.sequential_recommender.{name.lower()}"] = sys.modules[model_class.__module__]
        dataset_class = getattr(model_class, "dataset_class", None)
        if dataset_class is not None:
            setattr(recbole_datasets, f"{name}Dataset", dataset_class)
