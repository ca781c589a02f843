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


def _replace_once(owner: Any, name: str, make: Callable[[Any], Callable[..., Any]]) -> None:
    """``owner.name = make(original)``, unless an earlier ``apply()`` replaced it already."""
    original = getattr(owner, name)
    if getattr(original, "__acerec_patched__", False):
        return
    replacement = functools.wraps(original)(make(original))
    replacement.__acerec_patched__ = True  # type: ignore[attr-defined]
    setattr(owner, name, replacement)


def _race_free_ensure_dir() -> None:
    # RecBole's ensure_dir checks that a folder exists and then creates it: two processes started together
    # (DDP ranks, parallel runs) both see it missing and the second dies on FileExistsError. Every module
    # that imported it by name gets the exist_ok version.
    import os

    def ensure_dir(dir_path: str) -> None:
        os.makedirs(dir_path, exist_ok=True)

    for name in (
        "recbole.utils.utils", "recbole.utils", "recbole.utils.logger", "recbole.trainer.trainer",
        "recbole.data.dataset.dataset", "recbole.data.utils",
    ):  # fmt: skip
        importlib.import_module(name).ensure_dir = ensure_dir


def _ddp_backend_by_device() -> None:
    # RecBole 1.2.1's Config._init_device, when distributed (``local_rank`` set by its run_recboles),
    # asserts one GPU id per process, hard-codes the nccl backend and forces the device to CUDA: DDP
    # cannot run on a CPU. Here the backend follows the device (gloo on CPU, nccl on CUDA; the key
    # ``ddp_backend`` overrides) and the process group is initialised once per process. The
    # single-process branch is RecBole's own.
    from recbole.config import Config

    def make(original: Any) -> Callable[..., Any]:
        return lambda self: original(self) if "local_rank" not in self.final_config_dict else _init_ddp_device(self)

    _replace_once(Config, "_init_device", make)


def _init_ddp_device(self: Any) -> None:
    """RecBole's ``Config._init_device`` for a process of a DDP group, with the backend by device."""
    import datetime
    import os

    import torch.distributed as dist

    from acerec_recbole.distributed import choose_backend

    settings = self.final_config_dict
    gpu_id = settings["gpu_id"]
    settings["gpu_id"] = ",".join(map(str, gpu_id)) if isinstance(gpu_id, tuple) else str(gpu_id)
    use_cuda = bool(settings.get("use_gpu", True)) and torch.cuda.is_available() and settings["gpu_id"] != ""
    if use_cuda:
        os.environ["CUDA_VISIBLE_DEVICES"] = settings["gpu_id"]
    backend = choose_backend(settings.get("ddp_backend"), use_cuda)
    local_rank = int(settings["local_rank"])
    if backend == "nccl" or use_cuda:
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    if not dist.is_initialized():
        dist.init_process_group(
            backend=backend,
            rank=local_rank + int(settings.get("offset") or 0),
            world_size=int(settings["world_size"]),
            init_method=f"tcp://{settings['ip']}:{settings['port']}",
            timeout=datetime.timedelta(seconds=float(settings.get("ddp_timeout") or 1800)),
        )
    settings.update(device=device, single_spec=False, ddp_backend=backend)
    if local_rank != 0:  # RecBole's convention: only each node's first process logs and shows progress
        settings.update(state="error", show_progress=False, verbose=False)


def _ddp_on_cpu() -> None:
    # RecBole's AbstractTrainer wraps the model in DistributedDataParallel(device_ids=[local_rank]) after
    # converting batch norms to SyncBatchNorm: both are CUDA-only (torch refuses device_ids for a CPU
    # module; SyncBatchNorm cannot run on CPU). On CPU: no device_ids, batch norms left as they are.
    from recbole.trainer import AbstractTrainer
    from torch.nn.parallel import DistributedDataParallel

    def make(original: Any) -> Callable[..., Any]:
        def init(self: Any, config: Any, model: Any) -> None:
            if config["single_spec"] or config["device"].type == "cuda":
                return original(self, config, model)
            self.config, self.model = config, model
            self.distributed_model = DistributedDataParallel(self.model, device_ids=None)

        return init

    _replace_once(AbstractTrainer, "__init__", make)


def _shard_without_repeats() -> None:
    # Distributed, RecBole's data loaders take torch's DistributedSampler, which pads each loader to a
    # multiple of the world size by repeating samples: training sees some sequences twice per epoch and
    # evaluation counts some users twice. ShardedSampler (acerec_recbole/distributed.py) splits each
    # global batch among the ranks instead. The single-process branch is RecBole's own.
    from recbole.data.dataloader.abstract_dataloader import AbstractDataLoader

    def make(original: Any) -> Callable[..., Any]:
        return lambda self, config, dataset, sampler, shuffle=False: (
            original(self, config, dataset, sampler, shuffle)
            if config["single_spec"]
            else _init_sharded_loader(self, config, dataset, sampler, shuffle)
        )

    _replace_once(AbstractDataLoader, "__init__", make)


def _init_sharded_loader(self: Any, config: Any, dataset: Any, sampler: Any, shuffle: bool) -> None:
    """RecBole's ``AbstractDataLoader.__init__`` in a DDP group, with ``ShardedSampler``."""
    import torch.distributed as dist
    from recbole.data.transform import construct_transform
    from recbole.utils import ModelType

    from acerec_recbole.distributed import ShardedSampler

    self.shuffle, self.config, self._dataset, self._sampler = shuffle, config, dataset, sampler
    self._batch_size = self.step = self.model = None
    self._init_batch_size_and_step()
    self.generator = torch.Generator()
    self.generator.manual_seed(config["seed"])
    self.transform = construct_transform(config)
    self.is_sequential = config["MODEL_TYPE"] == ModelType.SEQUENTIAL
    shards = ShardedSampler(
        self.sample_size, self.step, dist.get_world_size(), dist.get_rank(), shuffle, self.generator, pad=shuffle
    )
    self.step = shards.local_batch
    torch.utils.data.DataLoader.__init__(
        self,
        dataset=list(range(self.sample_size)),
        batch_size=self.step,
        collate_fn=self.collate_fn,
        num_workers=config["worker"],
        sampler=shards,
        generator=self.generator,
    )


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
    _race_free_ensure_dir()
    _ddp_backend_by_device()
    _ddp_on_cpu()
    _shard_without_repeats()
    _APPLIED = True
