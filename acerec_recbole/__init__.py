"""ACERec and RPG (long semantic IDs) as a RecBole extension."""

from acerec_recbole import compat

compat.apply()

from acerec_recbole.model import MODELS, register_with_recbole  # noqa: E402

register_with_recbole()

from acerec_recbole.config import Config, get_model_class  # noqa: E402
from acerec_recbole.quick_start import run  # noqa: E402

__all__ = ["Config", "MODELS", "get_model_class", "run"]
