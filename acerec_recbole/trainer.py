"""Trainers: atomic checkpoints and resumable training for every model, plus the warm-up + cosine
learning-rate schedule that RPG and ACERec train with.

RecBole's Trainer writes its checkpoint with ``torch.save`` over the same file (a kill mid-write leaves
it empty) and keeps no state to continue from. ``resumable(trainer_class)`` adds, to RecBole's
standard trainer or any subclass that keeps its fit loop:

- checkpoints written atomically (temporary file in the same folder, fsync, rename);
- after every epoch, a training state beside the checkpoint (``<checkpoint>.state.pth``): model,
  optimizer, schedule, optimiser steps taken, epoch, best validation score and result, early-stopping
  counter, the epoch history, every random-number generator that training draws from, and the resolved
  config;
- within long epochs, the same state every ``state_every_minutes`` (between two optimiser steps), so a
  kill loses minutes, not a whole epoch (an ml-1m SASRec epoch is ~30 min on one CPU core);
- ``resume(state_file)``, after which ``fit`` continues where the state was saved exactly as the
  uninterrupted run would have (same batches, same dropout masks);
- with ``ema_decay``, an exponential moving average of the weights, updated after every optimiser step and
  part of the training state: validation, the best-model checkpoint and the model after ``fit`` use the
  average, training goes on with the raw weights.
"""

from __future__ import annotations

import math
import os
import pickle
import random
import tempfile
import time
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from recbole.trainer import Trainer
from recbole.utils import dict2str, early_stopping, set_color
from torch.optim.lr_scheduler import LambdaLR

from acerec_recbole.distributed import WholeSetEvaluator, global_rank, is_distributed
from acerec_recbole.errors import UsageError

STATE_SUFFIX = ".state.pth"
# Config keys that may differ between an interrupted run and its resumption (where files live, how
# verbose it is, the resume request itself, how often states are saved, how memory is reused); any other
# difference means a different run.
# A run may also be resumed with another number of processes (RecBole's DDP keys).
RESUME_IGNORED_KEYS = frozenset(
    {"resume", "show_progress", "state", "data_path", "checkpoint_dir", "device", "gpu_id", "use_gpu", "log_wandb"}
    | {"single_spec", "local_rank", "nproc", "world_size", "ip", "port", "offset", "ddp_backend", "verbose"}
    | {"state_every_minutes", "cpu_memory_reuse"}
)
# Keys added to the package after runs had saved states, each with the value that trains as those runs
# did: a saved config that lacks such a key counts as having that value, so the run can still be resumed.
KEYS_ADDED_LATER = {
    "reconstruction_weight": 0.0,
    "mtp_temperature_start": None,
    "mtp_temperature_anneal_ratio": 0.1,
    "mtp_label_smoothing": 0.0,
    "ema_decay": None,
    "token_init_std": 0.02,
    "attn_qk_norm": False,
    "adam_beta2": None,
    "tie_output_tokens": True,
    "output_token_init_std": None,
    "warmup_steps": None,
}
# Default of the config key ``state_every_minutes``: how often a training state is saved within an epoch.
STATE_EVERY_MINUTES = 10.0


class CheckpointError(UsageError):
    """A checkpoint or training-state file that cannot be used; the message names the file and why."""


def save_atomically(obj: Any, path: str | Path) -> None:
    """``torch.save`` to a temporary file in the same folder, flushed to disk, then renamed over ``path``:
    a kill at any moment leaves either the previous file or the new one, never a partial file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".partial")
    try:
        with os.fdopen(fd, "wb") as handle:
            torch.save(obj, handle, pickle_protocol=4)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def load_checkpoint(path: str | Path, map_location: Any = "cpu", required: tuple[str, ...] = ("state_dict",)) -> dict:
    """Load a checkpoint this package or RecBole wrote; a missing, empty, truncated or foreign file is a
    ``CheckpointError`` naming the file and what is wrong (never a bare EOFError)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"Checkpoint {path} does not exist.")
    if path.stat().st_size == 0:
        raise CheckpointError(
            f"Checkpoint {path} is empty (0 bytes): it was being written when its process was killed (RecBole "
            "overwrites checkpoints in place). Use another checkpoint or train again."
        )
    try:
        data = torch.load(path, map_location=map_location, weights_only=False)
    except (EOFError, RuntimeError, pickle.UnpicklingError, zipfile.BadZipFile, ValueError) as err:
        raise CheckpointError(
            f"Checkpoint {path} is truncated or corrupt ({type(err).__name__}: {err}). Use another checkpoint "
            "or train again."
        ) from err
    missing = [key for key in required if not isinstance(data, dict) or key not in data]
    if missing:
        found = sorted(data)[:8] if isinstance(data, dict) else type(data).__name__
        raise CheckpointError(
            f"{path} is not a RecBole model checkpoint: it lacks {missing} (found {found}). Pass a .pth file "
            "written by run_recbole.py / RecBole's trainer."
        )
    return data


def config_differences(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """Keys whose values differ between two resolved configs (``RESUME_IGNORED_KEYS`` aside)."""
    keys = (set(saved) | set(current)) - RESUME_IGNORED_KEYS
    return sorted(k for k in keys if plain(saved.get(k, KEYS_ADDED_LATER.get(k))) != plain(current.get(k)))


def plain(value: Any) -> Any:
    """A yaml/json-safe copy of a config value (torch devices, enums and the like become strings)."""
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


def find_resumable_state(checkpoint_dir: str | Path, model: str, dataset: str) -> Path | None:
    """The newest training state of ``model`` on ``dataset`` in ``checkpoint_dir``, if any."""
    states = sorted(Path(checkpoint_dir).glob(f"{model}-*{STATE_SUFFIX}"), key=lambda p: p.stat().st_mtime)
    for path in reversed(states):
        try:
            state = load_checkpoint(path, required=("config",))
        except CheckpointError:
            continue
        if state["config"].get("dataset") == dataset:
            return path
    return None


def random_states(train_data: Any) -> dict[str, Any]:
    """Every random generator training draws from: python, numpy, torch (and CUDA), the training loader's."""
    return {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
        "train_loader": train_data.generator.get_state() if hasattr(train_data, "generator") else None,
    }


def restore_random_states(states: dict[str, Any], train_data: Any) -> None:
    random.setstate(states["python"])
    np.random.set_state(states["numpy"])
    torch.set_rng_state(states["torch"])
    if states["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])
    if states["train_loader"] is not None and hasattr(train_data, "generator"):
        train_data.generator.set_state(states["train_loader"])


def epoch_seconds(entry: dict[str, Any]) -> float:
    """An ``epoch_history`` entry's wall time: training plus validation (absent when it did not validate)."""
    return entry["train_seconds"] + entry.get("valid_seconds", 0.0)


class ResumableTrainerMixin:
    """Atomic checkpoints, a training state after every epoch, and ``resume``; see the module docstring.

    The fit loop is RecBole's (train, validate every ``eval_step`` epochs, early stopping on
    ``valid_metric``, checkpoint on improvement), written out here so that the state can be saved at
    the end of each epoch and training can start again at any epoch.
    """

    def __init__(self, config: Any, model: Any) -> None:
        super().__init__(config, model)
        self.state_file = str(Path(self.saved_model_file).with_suffix(STATE_SUFFIX))
        self.epoch_history: list[dict[str, Any]] = []
        self.scheduler: Any = None
        self.stopped = False
        self.finished = False
        self.last_epoch = -1
        self.optimiser_steps = 0  # over the whole run: what per-step schedules are functions of
        self.ema_decay = None if config["ema_decay"] is None else float(config["ema_decay"])
        self.averaged_weights: dict[str, torch.Tensor] | None = None  # with ema_decay: the weights' average
        if self.ema_decay is not None:
            self.averaged_weights = {name: p.detach().clone() for name, p in self._trained_parameters()}
        self.optimizer.register_step_post_hook(lambda *_: self._after_optimiser_step())
        self._pending_state: dict[str, Any] | None = None
        self._partial_epoch: dict[str, Any] | None = None  # where a resumed state stopped within an epoch
        minutes = config["state_every_minutes"]
        self.state_every_seconds = 60.0 * (STATE_EVERY_MINUTES if minutes is None else float(minutes))
        if is_distributed(config) or type(self)._train_epoch is not Trainer._train_epoch:
            # ranks would disagree on a time trigger (and saving is collective); a trainer with its own
            # epoch loop may not take a loss_func: states at epoch ends only
            self.state_every_seconds = 0.0
        if is_distributed(config):
            # metrics on the rows of every rank at once (RecBole averages per-rank metrics already rounded)
            self.evaluator = WholeSetEvaluator(self.evaluator)
            # RecBole names the checkpoint after each process's start time: every rank takes rank 0's name
            names = [self.saved_model_file]
            torch.distributed.broadcast_object_list(names, src=0)
            self.saved_model_file = names[0]
            self.state_file = str(Path(self.saved_model_file).with_suffix(STATE_SUFFIX))

    # --------------------------------------------------------------------------------- checkpoints

    def _save_checkpoint(self, epoch: int, verbose: bool = True, **kwargs: Any) -> None:
        if global_rank(self.config) != 0:
            return
        saved_model_file = kwargs.pop("saved_model_file", self.saved_model_file)
        state = {
            "config": self.config,
            "epoch": epoch,
            "cur_step": self.cur_step,
            "best_valid_score": self.best_valid_score,
            "state_dict": self.model.state_dict(),
            "other_parameter": self.model.other_parameter(),
            "optimizer": self.optimizer.state_dict(),
        }
        save_atomically(state, saved_model_file)
        if verbose:
            self.logger.info(set_color("Saving current", "blue") + f": {saved_model_file}")

    def build_scheduler(self, train_data: Any) -> Any:
        """A learning-rate scheduler stepped after every optimiser step, or None (RecBole's default)."""
        return None

    def _build_optimizer(self, **kwargs: Any) -> Any:
        return with_adam_beta2(super()._build_optimizer(**kwargs), self.config)

    def _after_optimiser_step(self) -> None:
        self.optimiser_steps += 1
        if self.scheduler is not None:
            self.scheduler.step()
        self.apply_step_schedules()
        if self.averaged_weights is not None:
            self._update_weight_average()

    # ------------------------------------------------------------------------------ weight average

    def _trained_parameters(self) -> list[tuple[str, torch.nn.Parameter]]:
        return [(name, p) for name, p in self.model.named_parameters() if p.requires_grad]

    def _update_weight_average(self) -> None:
        """avg <- d avg + (1 - d) w, with d = min(ema_decay, (1 + n) / (10 + n)) after n steps: the first
        steps' weights, still near the initialisation, fade out quickly instead of lingering for 1 / (1 - d)."""
        n = self.optimiser_steps
        keep = min(self.ema_decay, (1.0 + n) / (10.0 + n))
        with torch.no_grad():
            for name, p in self._trained_parameters():
                self.averaged_weights[name].lerp_(p.detach(), 1.0 - keep)

    @contextmanager
    def averaged_weights_in_model(self) -> Iterator[None]:
        """Within the block the model holds the averaged weights (nothing changes without ``ema_decay``);
        the raw weights come back after it, for training to go on with."""
        if self.averaged_weights is None:
            yield
            return
        raw = {name: p.detach().clone() for name, p in self._trained_parameters()}
        self._copy_into_model(self.averaged_weights)
        try:
            yield
        finally:
            self._copy_into_model(raw)

    def _copy_into_model(self, weights: dict[str, torch.Tensor]) -> None:
        # in place: the optimizer keeps its parameters, and their version counters tell caches they changed
        with torch.no_grad():
            for name, p in self._trained_parameters():
                p.copy_(weights[name])

    def apply_step_schedules(self) -> None:
        """Set what depends on ``optimiser_steps`` besides the learning rate (before training starts or
        resumes, and after every optimiser step); nothing here."""

    def _save_state(
        self, epoch: int, train_data: Any, partial_epoch: dict[str, Any] | None = None, rng: Any = None
    ) -> None:
        """``epoch``: the last finished epoch. ``partial_epoch``: how far the next one got; ``rng`` is then
        the generators as that epoch started (``partial_epoch["rng"]``: as they are now)."""
        rng = rng if rng is not None else random_states(train_data)
        rng_by_rank = None
        if is_distributed(self.config):  # each rank draws its own dropout masks: keep every rank's generators
            rng_by_rank = [None] * torch.distributed.get_world_size()
            torch.distributed.all_gather_object(rng_by_rank, rng)
        if global_rank(self.config) != 0:
            return
        state = {
            "format": "acerec-recbole training state v1",
            "config": dict(self.config.final_config_dict),
            "model": self.config["model"],
            "epoch": epoch,
            "cur_step": self.cur_step,
            "optimiser_steps": self.optimiser_steps,
            "best_valid_score": self.best_valid_score,
            "best_valid_result": dict(self.best_valid_result) if self.best_valid_result is not None else None,
            "stopped": self.stopped,
            "finished": self.finished,
            "saved_model_file": self.saved_model_file,
            "epoch_history": self.epoch_history,
            "train_loss_dict": dict(self.train_loss_dict),
            "state_dict": self.model.state_dict(),
            "other_parameter": self.model.other_parameter(),
            "averaged_weights": self.averaged_weights,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
            "rng": rng,
            "rng_by_rank": rng_by_rank,
            "partial_epoch": partial_epoch,
        }
        save_atomically(state, self.state_file)

    def resume(self, state_file: str | Path) -> None:
        """Load a training state; the next ``fit`` continues after its last finished epoch.

        Refuses a state whose model, dataset or settings differ from this run's (naming the keys).
        """
        state = load_checkpoint(state_file, required=("format", "config", "optimizer", "rng"))
        differences = config_differences(state["config"], dict(self.config.final_config_dict))
        if differences:
            shown = ", ".join(f"{k}: {state['config'].get(k)!r} -> {self.config[k]!r}" for k in differences[:8])
            raise CheckpointError(
                f"Cannot resume from {state_file}: it was trained with other settings ({len(differences)} keys "
                f"differ; saved -> now: {shown}). Resume with the same settings, or start a fresh run without "
                "--resume (or with another checkpoint_dir)."
            )
        self.model.load_state_dict(state["state_dict"])
        self.model.load_other_parameter(state.get("other_parameter"))
        if self.ema_decay is not None:
            if state.get("averaged_weights") is None:
                raise CheckpointError(f"Cannot resume from {state_file}: it has no weight average (ema_decay).")
            self.averaged_weights = {name: w.clone() for name, w in state["averaged_weights"].items()}
        self.optimizer.load_state_dict(state["optimizer"])
        self.start_epoch = state["epoch"] + 1
        self.last_epoch = state["epoch"]
        self.cur_step = state["cur_step"]
        self.optimiser_steps = state.get("optimiser_steps", 0)  # states saved before it was counted: 0
        self.best_valid_score = state["best_valid_score"]
        self.best_valid_result = state["best_valid_result"]
        self.stopped, self.finished = state["stopped"], state["finished"]
        self.saved_model_file = state["saved_model_file"]
        self.state_file = str(state_file)
        self.epoch_history = list(state["epoch_history"])
        self.train_loss_dict.update(state["train_loss_dict"])
        self._pending_state = state  # schedule and random generators are restored when fit starts
        self._partial_epoch = state.get("partial_epoch")
        within = ""
        if self._partial_epoch is not None:
            within = f" and {self._partial_epoch['batches_done']} batches of the next"
        self.logger.info(
            f"Resuming from {state_file}: {len(self.epoch_history)} epochs{within} done, best {self.valid_metric} "
            f"{self.best_valid_score:.4f}" + (", training already finished" if self.finished else "")
        )

    def _rank_random_states(self, state: dict[str, Any]) -> dict[str, Any]:
        """This process's generators from a state: its own rank's when the state was saved by as many ranks."""
        by_rank = state.get("rng_by_rank")
        if is_distributed(self.config) and by_rank and len(by_rank) == torch.distributed.get_world_size():
            return by_rank[global_rank(self.config)]
        return state["rng"]

    # -------------------------------------------------------------------------------------- fit loop

    def fit(
        self,
        train_data: Any,
        valid_data: Any = None,
        verbose: bool = True,
        saved: bool = True,
        show_progress: bool = False,
        callback_fn: Any = None,
    ) -> tuple[float, Any]:
        self.scheduler = self.build_scheduler(train_data)
        if self._pending_state is not None:
            if self.scheduler is not None and self._pending_state["scheduler"] is not None:
                self.scheduler.load_state_dict(self._pending_state["scheduler"])
                # building the scheduler set the learning rate of its first step: take the saved one back
                self.optimizer.load_state_dict(self._pending_state["optimizer"])
            restore_random_states(self._rank_random_states(self._pending_state), train_data)
            self._pending_state = None
        self.apply_step_schedules()
        self.eval_collector.data_collect(train_data)
        if self.config["train_neg_sample_args"].get("dynamic", False):
            train_data.get_model(self.model)

        for epoch_idx in range(self.start_epoch, self.epochs):
            if self.stopped:
                break
            started = time.time()
            train_loss, earlier_seconds = self._train_epoch_with_states(train_data, epoch_idx, saved, show_progress)
            ended = time.time()
            started -= earlier_seconds  # the part of this epoch trained before a resume
            self.train_loss_dict[epoch_idx] = sum(train_loss) if isinstance(train_loss, tuple) else train_loss
            if verbose:
                self.logger.info(self._generate_train_loss_output(epoch_idx, started, ended, train_loss))
            self._add_train_loss_to_tensorboard(epoch_idx, train_loss)
            self.wandblogger.log_metrics(
                {"epoch": epoch_idx, "train_loss": train_loss, "train_step": epoch_idx}, head="train"
            )
            entry: dict[str, Any] = {
                "epoch": epoch_idx + 1,
                "train_seconds": ended - started,
                "train_loss": float(self.train_loss_dict[epoch_idx]),
            }
            if self.eval_step <= 0 or not valid_data:
                if saved:
                    with self.averaged_weights_in_model():
                        self._save_checkpoint(epoch_idx, verbose=verbose)
            elif (epoch_idx + 1) % self.eval_step == 0:
                with self.averaged_weights_in_model():
                    self._validate(epoch_idx, valid_data, entry, verbose, saved, show_progress, callback_fn)
            self.epoch_history.append(entry)
            self.last_epoch = epoch_idx
            if verbose and len(self.epoch_history) == 1 and self.epochs - epoch_idx > 1:
                seconds = epoch_seconds(entry)
                self.logger.info(
                    f"One epoch took {seconds:.0f} s: at most {seconds * (self.epochs - epoch_idx - 1) / 60:.1f} min "
                    f"for the remaining {self.epochs - epoch_idx - 1} epochs (early stopping may end it sooner)."
                )
            if saved:
                self._save_state(epoch_idx, train_data)
            if self.stopped:
                best = epoch_idx - self.cur_step * self.eval_step
                if verbose:
                    self.logger.info(f"Finished training, best eval result in epoch {best}")
                break
        self.finished = True
        if saved and self.last_epoch >= 0:
            self._save_state(self.last_epoch, train_data)
        if self.averaged_weights is not None:
            self._copy_into_model(self.averaged_weights)  # the trained model is the average
        self._add_hparam_to_tensorboard(self.best_valid_score)
        return self.best_valid_score, self.best_valid_result

    def _train_epoch_with_states(
        self, train_data: Any, epoch_idx: int, saved: bool, show_progress: bool
    ) -> tuple[Any, float]:
        """RecBole's ``_train_epoch``, saving a training state every ``state_every_minutes`` between two
        optimiser steps; after a resume from such a state, the epoch's first batches are drawn again (same
        order, same loader generator) but not trained on. Returns the epoch's loss and the seconds of it
        trained before the resume."""
        partial, self._partial_epoch = self._partial_epoch, None
        if partial is None and not (saved and self.state_every_seconds > 0):
            return self._train_epoch(train_data, epoch_idx, show_progress=show_progress), 0.0
        epoch_start_rng = random_states(train_data)  # after a resume: as restored by fit
        skip = partial["batches_done"] if partial else 0
        progress = {"loss": partial["loss"] if partial else None, "done": skip}
        epoch_started, last_saved = time.time(), time.time()
        earlier_seconds = partial["seconds"] if partial else 0.0

        def batches():
            nonlocal last_saved
            iterator = iter(train_data)
            for _ in range(skip):
                next(iterator)
            if partial is not None:
                restore_random_states(partial["rng"], train_data)
            for batch in iterator:
                yield batch
                # the optimiser step of this batch is done and the next batch not drawn yet
                if progress["done"] < len(train_data) and time.time() - last_saved >= self.state_every_seconds:
                    where = {
                        "epoch": epoch_idx,
                        "batches_done": progress["done"],
                        "loss": progress["loss"],
                        "seconds": earlier_seconds + time.time() - epoch_started,
                        "rng": random_states(train_data),
                    }
                    self._save_state(epoch_idx - 1, train_data, partial_epoch=where, rng=epoch_start_rng)
                    self.logger.info(
                        f"Saved the training state at batch {progress['done']}/{len(train_data)} of epoch {epoch_idx}"
                    )
                    last_saved = time.time()

        def loss_func(interaction: Any) -> Any:
            losses = self.model.calculate_loss(interaction)
            total = progress["loss"]  # summed as RecBole's _train_epoch sums, so the totals are equal
            if isinstance(losses, tuple):
                parts = tuple(part.item() for part in losses)
                progress["loss"] = parts if total is None else tuple(map(sum, zip(total, parts)))
            else:
                progress["loss"] = losses.item() if total is None else total + losses.item()
            progress["done"] += 1
            return losses

        self._train_epoch(ReplayedLoader(train_data, batches), epoch_idx, loss_func, show_progress)
        return progress["loss"], earlier_seconds

    @torch.no_grad()
    def evaluate(
        self, eval_data: Any, load_best_model: bool = True, model_file: Any = None, show_progress: bool = False
    ) -> Any:
        if is_distributed(self.config) and load_best_model and eval_data:
            # rank 0 wrote the checkpoint; the other ranks, possibly on other nodes, get its weights from it
            self._load_best_on_every_rank(model_file or self.saved_model_file)
            load_best_model = False
        return super().evaluate(eval_data, load_best_model, model_file, show_progress)

    def _load_best_on_every_rank(self, checkpoint_file: Any) -> None:
        payload: list[Any] = [None, None]
        if global_rank(self.config) == 0:
            checkpoint = load_checkpoint(checkpoint_file, map_location="cpu")
            payload = [checkpoint["state_dict"], checkpoint.get("other_parameter")]
        torch.distributed.broadcast_object_list(payload, src=0)
        self.model.load_state_dict(payload[0])
        self.model.load_other_parameter(payload[1])
        self.logger.info(f"Loading model structure and parameters from {checkpoint_file}")

    def _map_reduce(self, result: Any, num_sample: int) -> Any:
        return result  # WholeSetEvaluator already computed the metrics over every rank's users

    def _validate(
        self,
        epoch_idx: int,
        valid_data: Any,
        entry: dict[str, Any],
        verbose: bool,
        saved: bool,
        show_progress: bool,
        callback_fn: Any,
    ) -> None:
        started = time.time()
        valid_score, valid_result = self._valid_epoch(valid_data, show_progress=show_progress)
        self.best_valid_score, self.cur_step, self.stopped, improved = early_stopping(
            valid_score,
            self.best_valid_score,
            self.cur_step,
            max_step=self.stopping_step,
            bigger=self.valid_metric_bigger,
        )
        seconds = time.time() - started
        entry.update(
            valid_seconds=seconds, valid_score=float(valid_score), **{k: float(v) for k, v in valid_result.items()}
        )
        if verbose:
            self.logger.info(
                set_color(f"epoch {epoch_idx} evaluating", "green")
                + f" [time: {seconds:.2f}s, valid_score: {valid_score:f}]"
            )
            self.logger.info(set_color("valid result", "blue") + ": \n" + dict2str(valid_result))
        self.tensorboard.add_scalar("Vaild_score", valid_score, epoch_idx)
        valid_step = sum("valid_score" in h for h in self.epoch_history)
        self.wandblogger.log_metrics({**valid_result, "valid_step": valid_step}, head="valid")
        if improved:
            if saved:
                self._save_checkpoint(epoch_idx, verbose=verbose)
            self.best_valid_result = valid_result
        if callback_fn:
            callback_fn(epoch_idx, valid_score)


class ReplayedLoader:
    """The training loader as ``_train_epoch`` sees it (length, sampler, shuffle flag ...), iterated
    through ``batches`` so that a training state can be saved, or a resumed epoch fast-forwarded,
    between two batches."""

    def __init__(self, loader: Any, batches: Any) -> None:
        self._loader, self._batches = loader, batches

    def __iter__(self) -> Any:
        return self._batches()

    def __len__(self) -> int:
        return len(self._loader)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._loader, name)


def with_adam_beta2(optimizer: Any, config: Any) -> Any:
    """``optimizer`` with Adam's second-moment decay set to ``adam_beta2`` (~: the optimiser's own).

    RecBole builds its optimisers with torch's default betas; a lower beta2 (e.g. 0.98) lets the step-size
    estimate follow sudden gradient bursts sooner, so a burst after a calm stretch moves the weights less.
    """
    beta2 = config["adam_beta2"]
    if beta2 is None:
        return optimizer
    if not all("betas" in group for group in optimizer.param_groups):
        raise UsageError(
            f"adam_beta2={beta2!r} needs an Adam-type optimiser, but learner={config['learner']!r} has no betas. "
            "Use learner: adam or adamw, or unset adam_beta2."
        )
    for group in optimizer.param_groups:
        group["betas"] = (group["betas"][0], float(beta2))
    return optimizer


def resumable(trainer_class: type) -> type:
    """``trainer_class`` with atomic checkpoints, per-epoch training states and ``resume``.

    Trainers that replace RecBole's fit loop (e.g. decision-tree or pre-training trainers) get atomic
    checkpoints only; ``resume`` is then refused with a clear message.
    """
    if issubclass(trainer_class, ResumableTrainerMixin):
        return trainer_class
    if issubclass(trainer_class, Trainer) and trainer_class.fit is Trainer.fit:
        return type(trainer_class.__name__, (ResumableTrainerMixin, trainer_class), {"__module__": __name__})

    def refuse(self: Any, state_file: Any) -> None:
        raise CheckpointError(f"{trainer_class.__name__} has its own fit loop: resuming it is not supported.")

    def init(self: Any, config: Any, model: Any) -> None:
        if config["ema_decay"] is not None:  # its fit loop would ignore the key: say so instead
            raise UsageError(
                f"ema_decay={config['ema_decay']!r} is not supported with {config['model']}: its trainer "
                f"({trainer_class.__name__}) has its own fit loop, which keeps no weight average. Unset ema_decay."
            )
        trainer_class.__init__(self, config, model)

    def atomic_save(self: Any, epoch: int, verbose: bool = True, **kwargs: Any) -> None:
        ResumableTrainerMixin._save_checkpoint(self, epoch, verbose, **kwargs)

    def build_optimizer(self: Any, **kwargs: Any) -> Any:
        return with_adam_beta2(trainer_class._build_optimizer(self, **kwargs), self.config)

    return type(
        trainer_class.__name__,
        (trainer_class,),
        {
            "__module__": __name__,
            "__init__": init,
            "resume": refuse,
            "_save_checkpoint": atomic_save,
            "_build_optimizer": build_optimizer,
            "epoch_history": [],
        },
    )


def warmup_cosine(total_steps: int, warmup_steps: int):
    """Linear warm-up to the base rate, then cosine decay to zero at ``total_steps``."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    return factor


def annealed_temperature(start: float, end: float, anneal_steps: int):
    """gamma after ``step`` optimiser steps: linear from ``start`` to ``end`` over ``anneal_steps``, then ``end``."""

    def temperature(step: int) -> float:
        if step >= anneal_steps:
            return end
        return start + (end - start) * step / anneal_steps

    return temperature


def mtp_temperature_schedule(config: Any, total_steps: int):
    """gamma by optimiser step from ``mtp_temperature_start`` / ``mtp_temperature_anneal_ratio``; None: gamma fixed."""
    start = config["mtp_temperature_start"]
    if start is None:
        return None
    ratio = config["mtp_temperature_anneal_ratio"]
    anneal = int(total_steps * (0.1 if ratio is None else ratio))
    return annealed_temperature(float(start), config["mtp_temperature"], anneal)


def warmup_length(config: Any, total_steps: int) -> int:
    """Warm-up steps: ``warmup_steps`` when set, else ``warmup_ratio`` of all steps (at least 1).

    A ratio moves with ``epochs`` (on Toys, 0.05 of 20 epochs is 306 steps against 459 of 30, and two seeds lost
    their start that way), so a length that must stay put when ``epochs`` changes is given in steps.
    """
    steps = config["warmup_steps"]
    if steps is None:
        return max(1, int(total_steps * (config["warmup_ratio"] or 0.0)))
    if steps >= total_steps:
        raise UsageError(
            f"warmup_steps={steps} is not shorter than the whole training ({total_steps} optimiser steps), so the "
            "learning rate would never decay: lower warmup_steps, raise epochs, or use warmup_ratio instead."
        )
    return steps


class SemanticIDTrainer(ResumableTrainerMixin, Trainer):
    """``lr_scheduler: cosine`` (default for ACERec/RPG) or ``none``; ``warmup_steps``, or ``warmup_ratio`` of
    all steps.
    ``mtp_temperature_start``: gamma annealed from it to ``mtp_temperature`` over the first
    ``mtp_temperature_anneal_ratio`` of all steps (a soft start against the collapse of the first epochs,
    the sharp gamma for the rest); ~ keeps gamma fixed.

    Both schedules span ``epochs`` x batches per epoch and advance after every optimiser step; early
    stopping simply ends them sooner. Their position is part of the training state, so a resumed run
    continues the same schedules, and gamma is saved with every checkpoint.
    """

    temperature_schedule: Any = None  # gamma by optimiser step, set by build_scheduler when gamma is annealed

    def build_scheduler(self, train_data: Any) -> Any:
        total = max(1, self.epochs * len(train_data))
        self.temperature_schedule = mtp_temperature_schedule(self.config, total)
        if (self.config["lr_scheduler"] or "none").lower() != "cosine":
            return None
        return LambdaLR(self.optimizer, warmup_cosine(total, warmup_length(self.config, total)))

    def apply_step_schedules(self) -> None:
        if self.temperature_schedule is not None:
            self.model.mtp_temperature = self.temperature_schedule(self.optimiser_steps)
