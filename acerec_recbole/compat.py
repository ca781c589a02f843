"""Make RecBole 1.2.1 run on current torch / numpy / setuptools.

Imported once, first, by ``acerec_recbole/__init__.py``. Every patch is idempotent and says why it
exists; delete a patch when the RecBole release we pin no longer needs it.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import sys
import types
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch

from acerec_recbole.errors import UsageError

_APPLIED = False


def _restore_numpy_aliases() -> None:
    # RecBole's Config.compatibility_settings() reads np.float_/np.complex_/np.unicode_ (gone in numpy 2)
    # and then sets np.float, np.int, np.bool ... (gone since numpy 1.24), which its metrics and data code
    # use. A process that only unpickles a checkpoint's Config (load_data_and_model, resume) never runs
    # that method, so its first evaluation died on np.float: set the same aliases at import.
    for alias, target in (("float_", np.float64), ("complex_", np.complex128), ("unicode_", np.str_)):
        if not hasattr(np, alias):
            setattr(np, alias, target)
    legacy = {
        "bool": np.bool_, "int": np.int_, "float": np.float64, "complex": np.complex128,
        "object": np.object_, "str": np.str_, "long": np.int_, "unicode": np.str_,
    }  # fmt: skip
    for alias, target in legacy.items():
        if alias not in np.__dict__:
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


@contextlib.contextmanager
def _torch_load_trusting_recbole() -> Iterator[None]:
    """Inside: ``torch.load`` defaults to ``weights_only=False`` (an explicit argument still wins)."""
    original = torch.load

    def load(*args: Any, **kwargs: Any) -> Any:
        kwargs.setdefault("weights_only", False)
        return original(*args, **kwargs)

    torch.load = load
    try:
        yield
    finally:
        torch.load = original


def _trusting(function: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(function)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with _torch_load_trusting_recbole():
            return function(*args, **kwargs)

    wrapper.__acerec_trusting__ = True  # type: ignore[attr-defined]
    return wrapper


def _trust_recbole_checkpoints() -> None:
    # torch >= 2.6 defaults torch.load(weights_only=True), which refuses RecBole's own checkpoints (they
    # pickle a Config). Only the RecBole functions that reload checkpoints RecBole itself wrote are wrapped.
    import recbole.quick_start
    import recbole.quick_start.quick_start as quick_start
    from recbole.trainer import Trainer

    for owner, name in ((Trainer, "evaluate"), (Trainer, "resume_checkpoint"), (quick_start, "load_data_and_model")):
        setattr(owner, name, _trusting(getattr(owner, name)))
    recbole.quick_start.load_data_and_model = quick_start.load_data_and_model


def _undo_sine_anomaly_detection() -> None:
    # recbole/model/sequential_recommender/sine.py calls torch.autograd.set_detect_anomaly(True) at import;
    # RecBole's get_model imports it for every sequential model, slowing every backward pass (~1.5x).
    importlib.import_module("recbole.model.sequential_recommender.sine")
    torch.autograd.set_detect_anomaly(False)


def _quiet_recbole_deprecations() -> None:
    # RecBole 1.2.1 calls pandas and torch APIs that now warn (chained inplace fillna, Series.agg(len),
    # torch.cuda.amp.GradScaler): ~20 FutureWarning lines per run that a user can do nothing about.
    # Only warnings attributed to RecBole's own modules are silenced; ours and everybody else's stay.
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"recbole\.")
    warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"recbole\.")


class AtomicFileError(UsageError):
    """A line of an atomic file with another number of fields than its header."""


def check_atomic_file(path: Any, separator: str = "\t", encoding: str | None = "utf-8") -> None:
    """Every line of a RecBole atomic file has as many fields as its header; else name file:line and the fix."""
    with open(path, encoding=encoding or "utf-8", newline="") as handle:
        expected = handle.readline().rstrip("\r\n").count(separator) + 1
        for number, line in enumerate(handle, start=2):
            line = line.rstrip("\r\n")
            found = line.count(separator) + 1
            if found != expected and line:
                raise AtomicFileError(
                    f"{path}:{number}: {found} fields, but the header has {expected}. Fields are separated by "
                    f"{separator!r} and a text field cannot contain it or a line break: remove those characters "
                    "from the text (python -m dataset_prep writes files without them)."
                )


class _LiteralQuotesPandas:
    """pandas, except that ``read_csv`` first checks field counts and takes quotes as characters."""

    def __getattr__(self, name: str) -> Any:
        import pandas

        return getattr(pandas, name)

    @staticmethod
    def read_csv(filepath: Any, *args: Any, **kwargs: Any) -> Any:
        import csv

        import pandas

        check_atomic_file(filepath, kwargs.get("delimiter") or kwargs.get("sep") or "\t", kwargs.get("encoding"))
        kwargs.setdefault("quoting", csv.QUOTE_NONE)
        return pandas.read_csv(filepath, *args, **kwargs)


def _read_atomic_files_literally() -> None:
    # RecBole reads atomic files with pandas' default CSV quoting: a title that starts with '"' (common
    # in Amazon metadata) swallows every following line up to the next field that ends with '"', and
    # those rows vanish without a word (190 of 200 items kept in one test); a stray quote elsewhere gives
    # a ParserError naming no file. Atomic files are tab-separated text in which a quote is a character.
    import recbole.data.dataset.dataset as dataset_module

    if not isinstance(dataset_module.pd, _LiteralQuotesPandas):
        dataset_module.pd = _LiteralQuotesPandas()


def _report_interactions_without_features() -> None:
    # RecBole drops every interaction whose user or item has no row in the .user / .item file, without a
    # word (10 items and 156 of 1,159 interactions in one test copy). properties/overall.yaml now keeps
    # them (filter_inter_by_user_or_item: False; their text falls back to the raw item id); either way
    # the log says how many ids and interactions are concerned and what happened to them.
    from recbole.data.dataset import Dataset

    original = Dataset._filter_inter_by_user_or_item
    if getattr(original, "__acerec_reporting__", False):
        return

    @functools.wraps(original)
    def reporting(self: Any) -> None:
        dropping = self.config["filter_inter_by_user_or_item"] is True
        for features, field, suffix in (
            (self.user_feat, self.uid_field, "user"),
            (self.item_feat, self.iid_field, "item"),
        ):
            if features is None:
                continue
            missing = ~self.inter_feat[field].isin(features[field].values)
            if missing.any():
                ids = self.inter_feat.loc[missing, field].unique()
                fate = (
                    "dropped, with those interactions (filter_inter_by_user_or_item: True)"
                    if dropping
                    else "kept (set filter_inter_by_user_or_item: True to drop them)"
                )
                self.logger.warning(
                    f"{len(ids)} {suffix} ids of {self.dataset_name}.inter have no row in {self.dataset_name}.{suffix} "
                    f"(e.g. {', '.join(map(str, ids[:5]))}), in {int(missing.sum())} interactions: {fate}."
                )
        original(self)

    reporting.__acerec_reporting__ = True  # type: ignore[attr-defined]
    Dataset._filter_inter_by_user_or_item = reporting


def apply() -> None:
    """Apply all patches (safe to call more than once)."""
    global _APPLIED
    if _APPLIED:
        return
    _restore_numpy_aliases()
    _stub_ray_if_unimportable()
    _trust_recbole_checkpoints()
    _undo_sine_anomaly_detection()
    _quiet_recbole_deprecations()
    _read_atomic_files_literally()
    _report_interactions_without_features()
    _APPLIED = True
