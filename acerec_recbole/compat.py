"""Make RecBole 1.2.1 run on current torch / numpy / setuptools.

Imported once, first, by ``acerec_recbole/__init__.py``. Every patch is idempotent and says why it
exists; delete a patch when the RecBole release we pin no longer needs it.
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import Any

import numpy as np
import torch

_APPLIED = False


def _restore_numpy_aliases() -> None:
    # RecBole's Config.compatibility_settings() reads np.float_/np.complex_/np.unicode_ (gone in numpy 2).
    for alias, target in (("float_", np.float64), ("complex_", np.complex128), ("unicode_", np.str_)):
        if not hasattr(np, alias):
            setattr(np, alias, target)


def _stub_ray_if_unimportable() -> None:
    # recbole.quick_start does `from ray import tune` at import time; ray (only used for hyper-parameter
    # tuning) fails to import on current setuptools (no pkg_resources). Give it a placeholder that
    # raises only when tuning is actually used.
    try:
        import ray  # noqa: F401
        from ray import tune  # noqa: F401
    except Exception:  # any import-time failure of ray, not only ImportError
        ray = types.ModuleType("ray")
        tune = types.ModuleType("ray.tune")

        def _unavailable(*_args: Any, **_kwargs: Any) -> None:
            raise ImportError("ray could not be imported; RecBole's hyper-parameter tuning needs a working ray.")

        for name in ("report", "run", "Tuner"):
            setattr(tune, name, _unavailable)
        ray.tune = tune  # type: ignore[attr-defined]
        sys.modules["ray"] = ray
        sys.modules["ray.tune"] = tune


class _TorchWithTrustedLoad(types.ModuleType):
    """The torch module as seen by RecBole's checkpoint code, with ``weights_only=False`` loading.

    torch >= 2.6 defaults ``torch.load(weights_only=True)``, which refuses RecBole's own checkpoints
    (they pickle a Config). Only RecBole's modules that reload their own files get this view.
    """

    def __init__(self) -> None:
        super().__init__("torch")

    def __getattr__(self, name: str) -> Any:
        return getattr(torch, name)

    @staticmethod
    def load(*args: Any, **kwargs: Any) -> Any:
        kwargs.setdefault("weights_only", False)
        return torch.load(*args, **kwargs)


def _trust_recbole_checkpoints() -> None:
    trusted = _TorchWithTrustedLoad()
    for module_name in ("recbole.trainer.trainer", "recbole.quick_start.quick_start"):
        module = importlib.import_module(module_name)
        module.torch = trusted  # type: ignore[attr-defined]


def _undo_sine_anomaly_detection() -> None:
    # recbole/model/sequential_recommender/sine.py calls torch.autograd.set_detect_anomaly(True) at import;
    # RecBole's get_model imports it for every sequential model, slowing every backward pass (~1.5x).
    importlib.import_module("recbole.model.sequential_recommender.sine")
    torch.autograd.set_detect_anomaly(False)


def apply() -> None:
    """Apply all patches (safe to call more than once)."""
    global _APPLIED
    if _APPLIED:
        return
    _restore_numpy_aliases()
    _stub_ray_if_unimportable()
    _trust_recbole_checkpoints()
    _undo_sine_anomaly_detection()
    _APPLIED = True
