"""One training + evaluation run through RecBole's own pipeline (used by the CLI, benchmark and tests)."""

from __future__ import annotations

import ctypes
import ctypes.util
import itertools
import logging
import os
import time
from logging import getLogger
from pathlib import Path
from typing import Any

from recbole.data import create_dataset, data_preparation
from recbole.utils import get_trainer, init_logger, init_seed

from acerec_recbole.config import Config
from acerec_recbole.data.files import check_dataset_files
from acerec_recbole.trainer import (
    epoch_seconds,
    find_resumable_state,
    random_states,
    restore_random_states,
    resumable,
)


def run(
    model: str | type | None = None,
    dataset: str | None = None,
    config_file_list: list[str] | None = None,
    config_dict: dict[str, Any] | None = None,
    cmd_args: list[str] | None = None,
    saved: bool = True,
) -> dict[str, Any]:
    """Train, select on validation, test. Mirrors ``recbole.quick_start.run_recbole``.

    With the config key ``resume`` (``--resume=True``: the newest training state of this model and
    dataset in ``checkpoint_dir``; ``--resume=PATH``: that state file) an interrupted run continues
    after its last finished epoch; a finished one goes straight to its test. Returns the
    validation/test metrics plus what a benchmark needs: the config, the trained model, the trainer
    (``epoch_history``), the checkpoint path and times.
    """
    config = Config(model, dataset, config_file_list, config_dict, cmd_args)
    check_dataset_files(config)  # before the logger prints the whole config
    apply_cpu_memory_reuse(config)
    init_seed(config["seed"], config["reproducibility"])
    init_logger(config)
    logger = getLogger()
    keep_details_in_log_file(logger)
    logger.info(config, extra=LOG_FILE_ONLY)

    started = time.perf_counter()
    data = create_dataset(config)
    logger.info(data, extra=LOG_FILE_ONLY)
    train_data, valid_data, test_data = data_preparation(config, data)
    data_seconds = time.perf_counter() - started

    init_seed(config["seed"] + config["local_rank"], config["reproducibility"])
    recommender = config.model_class(config, train_data.dataset).to(config["device"])
    logger.info(recommender, extra=LOG_FILE_ONLY)
    logger.info(
        f"{config['model']} ({sum(p.numel() for p in recommender.parameters()):,} parameters) on {config['dataset']}: "
        f"{data.user_num - 1:,} users, {data.item_num - 1:,} items, {data.inter_num:,} interactions; "
        "the full config, dataset and model are in the log file"
    )

    trainer = resumable(get_trainer(config["MODEL_TYPE"], config["model"]))(config, recommender)
    state_file = state_to_resume(config)
    if state_file is not None:
        trainer.resume(state_file)
    if not getattr(trainer, "finished", False) and config["single_spec"]:  # a DDP-wrapped model: no extra batch
        if trainer.epoch_history:  # a resumed run: its own epochs say more than a batch would
            forecast_from_epochs(trainer.epoch_history, trainer.epochs - trainer.start_epoch, logger)
        else:
            forecast_run(recommender, train_data, trainer.epochs - trainer.start_epoch, logger)
    started = time.perf_counter()
    best_valid_score, best_valid_result = trainer.fit(
        train_data, valid_data, saved=saved, show_progress=config["show_progress"]
    )
    train_seconds = time.perf_counter() - started
    if trainer.epoch_history:  # counts the epochs of every session of a resumed run, not only this one
        train_seconds = sum(epoch_seconds(h) for h in trainer.epoch_history)
    started = time.perf_counter()
    test_result = trainer.evaluate(test_data, load_best_model=saved, show_progress=config["show_progress"])
    test_seconds = time.perf_counter() - started
    logger.info(f"best valid : {best_valid_result}")
    logger.info(f"test result: {test_result}")
    return {
        "config": config,
        "model": recommender,
        "trainer": trainer,
        "model_file": trainer.saved_model_file if saved else None,
        "best_valid_score": best_valid_score,
        "best_valid_result": dict(best_valid_result or {}),
        "test_result": dict(test_result),
        "data_seconds": data_seconds,
        "train_seconds": train_seconds,
        "test_seconds": test_seconds,
        "test_users": evaluated_users(test_data),
        "log_file": next(
            (h.baseFilename for h in logger.handlers if getattr(h, "baseFilename", "").endswith(".log")), None
        ),
    }


# glibc's mallopt parameters (malloc.h)
GLIBC_M_TRIM_THRESHOLD = -1
GLIBC_M_MMAP_MAX = -4


def glibc_mallopt() -> Any:
    """The C library's ``mallopt``, or None where there is none (not glibc)."""
    try:
        mallopt = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallopt
    except (OSError, AttributeError):
        return None
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return mallopt


def reuse_freed_memory() -> bool:
    """Keep the memory that CPU tensors free inside the process, for the next training step to reuse.

    By default glibc gives large blocks back to the kernel (mmap/munmap, heap trimming), and each step then
    page-faults and zeroes its large activations afresh. Measured on ml-1m at one thread (``python -m
    acerec_recbole.speed --dataset=ml-1m --data_path=../shared/data --profile=cpu-quality
    --models=ACERec,SASRec --train_steps=20``, with and without ``--cpu_memory_reuse=False``): CPU seconds
    per step 3.68 -> 2.73 for ACERec, 1.29 -> 1.16 for SASRec, nearly all of the saving kernel time. The
    numbers computed do not change (tested). Returns False where the C library has no ``mallopt`` (not glibc).
    """
    mallopt = glibc_mallopt()
    if mallopt is None:
        return False
    no_mmap = mallopt(GLIBC_M_MMAP_MAX, 0) == 1
    return no_mmap and mallopt(GLIBC_M_TRIM_THRESHOLD, 2**31 - 1) == 1  # keep up to 2 GiB of free heap


def apply_cpu_memory_reuse(config: Any) -> bool:
    """The config key ``cpu_memory_reuse`` (default True): ``reuse_freed_memory`` for this process."""
    return config["cpu_memory_reuse"] is not False and reuse_freed_memory()


def launch(
    model: str,
    dataset: str,
    config_file_list: list[str] | None = None,
    config_dict: dict[str, Any] | None = None,
    cmd_args: list[str] | None = None,
    nproc: int = 1,
    world_size: int = -1,
    ip: str = "localhost",
    port: int = 5678,
    group_offset: int = 0,
) -> dict[str, Any] | None:
    """``run`` in ``nproc`` processes of a DDP group, as RecBole's ``run_recboles`` starts them.

    ``world_size`` counts the processes of all nodes (default: ``nproc``, one node); this node's ranks
    are ``group_offset`` .. ``group_offset + nproc - 1``, and all meet at ``tcp://ip:port`` (rank 0's
    node). Settings that cannot work are refused before any process starts. Returns what rank 0's
    ``run`` returns, without the objects that cannot leave its process (model, trainer, config), or
    None on the nodes without rank 0.
    """
    import torch
    import torch.multiprocessing as mp

    from acerec_recbole.distributed import check_launch, choose_backend

    world_size = nproc if world_size in (None, -1) else int(world_size)
    config = Config(model, dataset, config_file_list, config_dict, cmd_args)  # usage errors before any process
    check_dataset_files(config)
    use_cuda = bool(config["use_gpu"]) and torch.cuda.is_available()
    backend = choose_backend(config["ddp_backend"], use_cuda)
    check_launch(nproc, world_size, group_offset, ip, int(port), backend)
    ddp = {"world_size": world_size, "ip": ip, "port": int(port), "nproc": nproc, "offset": group_offset}
    queue = mp.get_context("spawn").SimpleQueue()
    mp.spawn(
        _run_rank,
        args=(model, dataset, config_file_list, {**(config_dict or {}), **ddp}, cmd_args, queue),
        nprocs=nproc,
        join=True,
    )
    return None if queue.empty() else queue.get()


def _run_rank(
    local_rank: int,
    model: str,
    dataset: str,
    config_file_list: list[str] | None,
    config_dict: dict[str, Any],
    cmd_args: list[str] | None,
    queue: Any,
) -> None:
    import torch
    import torch.distributed as dist

    from acerec_recbole.distributed import cpu_threads_per_rank, global_rank

    torch.set_num_threads(cpu_threads_per_rank(config_dict["nproc"]))
    result = run(model, dataset, config_file_list, {**config_dict, "local_rank": local_rank}, cmd_args)
    if global_rank(result["config"]) == 0:
        queue.put({k: v for k, v in result.items() if k not in ("config", "model", "trainer")})
    dist.barrier()
    dist.destroy_process_group()


LOG_FILE_ONLY = {"log_file_only": True}
# A forecast above either limit is a warning: the settings are probably not meant for this machine.
FORECAST_WARN_HOURS = 6.0
FORECAST_WARN_MEMORY_SHARE = 0.7
# The first batch pays one-time costs (the heap growing to its working size, kernels set up): on ml-1m at
# one thread, beside two other trainings, SASRec's first batch took 4.2 s, its second 1.9 s, the third and
# later ones 1.0-0.85 s; ACERec's barely changed. So the forecast times up to FORECAST_BATCHES batches
# (stopping once FORECAST_MAX_SECONDS are spent) and uses the fastest.
FORECAST_BATCHES = 3
FORECAST_MAX_SECONDS = 30.0


def forecast_run(model: Any, train_data: Any, epochs: int, logger: Any) -> dict[str, Any]:
    """Time and memory of the whole training, from a few training batches (forward + backward) run first.

    The batches are run with every random generator and batch-norm statistic saved and restored, and
    gradients cleared, so the training that follows is exactly what it would have been. Warns when the
    run would take more than FORECAST_WARN_HOURS or the batches alone a FORECAST_WARN_MEMORY_SHARE of the
    machine's memory.
    """
    import resource

    import torch
    from recbole.utils import ModelType

    # traditional models (Pop, ItemKNN, EASE ...) count or solve instead of training: nothing to forecast,
    # and their calculate_loss has side effects
    trained_by_gradient = getattr(model, "type", None) in (ModelType.GENERAL, ModelType.SEQUENTIAL)
    if epochs <= 0 or len(train_data) == 0 or not trained_by_gradient:
        return {}
    generators = random_states(train_data)
    # a training-mode forward updates batch-norm statistics (some RecBole models have them): keep a copy
    norm_stats = [
        (buffer, buffer.clone())
        for module in model.modules()
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm)
        for buffer in module.buffers()
    ]
    batch_seconds: list[float] = []
    try:
        model.train()
        for batch in itertools.islice(iter(train_data), FORECAST_BATCHES):
            started = time.perf_counter()
            loss = model.calculate_loss(batch.to(model.device) if hasattr(batch, "to") else batch)
            (sum(loss) if isinstance(loss, tuple) else loss).backward()
            batch_seconds.append(time.perf_counter() - started)
            model.zero_grad(set_to_none=True)
            if sum(batch_seconds) > FORECAST_MAX_SECONDS:
                break
    except Exception as err:  # a forecast must never stop a run; training itself will say what is wrong
        logger.info(f"No time forecast ({type(err).__name__}: {err}).")
        return {}
    finally:
        model.zero_grad(set_to_none=True)
        with torch.no_grad():
            for buffer, saved in norm_stats:
                buffer.copy_(saved)
        restore_random_states(generators, train_data)
    hours = min(batch_seconds) * len(train_data) * epochs / 3600
    peak_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    total_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    timed = "one training batch" if len(batch_seconds) == 1 else f"the fastest of {len(batch_seconds)} training batches"
    message = (
        f"Forecast from {timed}: ~{hours * 60 / epochs:.1f} min per epoch, at most {hours:.1f} h for "
        f"{epochs} epochs; peak memory so far {peak_gib:.1f} of {total_gib:.0f} GiB"
    )
    if hours > FORECAST_WARN_HOURS or peak_gib > FORECAST_WARN_MEMORY_SHARE * total_gib:
        logger.warning(
            message + ". These settings look far beyond this machine: on a CPU use the CPU profile "
            "(run_recbole.py --profile=cpu), a smaller hidden_size or fewer epochs."
        )
    else:
        logger.info(message + ".")
    return {"hours": hours, "peak_gib": peak_gib, "batch_seconds": batch_seconds}


def forecast_from_epochs(history: list[dict[str, Any]], epochs_left: int, logger: Any) -> dict[str, float]:
    """A resumed run's time forecast, from the mean of its finished epochs (training plus validation)."""
    if epochs_left <= 0 or not history:
        return {}
    seconds = sum(epoch_seconds(h) for h in history) / len(history)
    hours = seconds * epochs_left / 3600
    finished = f"{len(history)} finished epoch" + ("s" if len(history) > 1 else "")
    logger.info(
        f"Forecast from its {finished}: ~{seconds / 60:.1f} min per epoch, at most {hours:.1f} h for the "
        f"{epochs_left} epochs left (early stopping may end it sooner)."
    )
    return {"hours": hours}


def keep_details_in_log_file(logger: Any) -> None:
    """Records logged with ``extra=LOG_FILE_ONLY`` (the ~150-line config dump, the dataset and model
    summaries) go to RecBole's log file but not to the terminal."""
    for handler in logger.handlers:
        if isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler):
            handler.addFilter(lambda record: not getattr(record, "log_file_only", False))


def state_to_resume(config: Any) -> Path | None:
    """The training state named by the config key ``resume`` (True: find it; a path: that file)."""
    value = config["resume"]
    if value is None or value is False or str(value).lower() in ("", "false", "0", "none"):
        return None
    if value is True or str(value).lower() == "true":
        found = find_resumable_state(config["checkpoint_dir"], config["model"], config["dataset"])
        if found is None:
            getLogger().info(
                f"resume: no training state of {config['model']} on {config['dataset']} in "
                f"{config['checkpoint_dir']}; starting a fresh run."
            )
        return found
    return Path(value)


def evaluated_users(eval_data: Any) -> int:
    """Users an evaluation loader scores: full-sort loaders list them (``uid_list``), others are per row."""
    return len(getattr(eval_data, "uid_list", eval_data.dataset))
