"""Multi-process training through RecBole's DDP: launching the ranks, sharding, whole-set evaluation.

RecBole's own design is kept: ``nproc`` processes per node started with torch.multiprocessing, global
rank ``local_rank + offset`` (``--group_offset``), ``world_size`` ranks over all nodes meeting at
``tcp://ip:port``, gradients averaged by torch's DistributedDataParallel, ``train_batch_size`` the
global batch. What differs from RecBole 1.2.1, and why:

- the backend follows the device (gloo on CPU, nccl on CUDA; ``ddp_backend`` overrides), where
  RecBole hard-codes nccl and CUDA (``compat._ddp_backend_by_device``);
- ``ShardedSampler`` replaces torch's DistributedSampler, which pads every loader to a multiple of
  the world size by repeating samples: each training sequence is now seen once per epoch overall,
  and evaluation rows are never repeated;
- evaluation metrics are computed on the rows of every rank at once (``gather_eval_rows``), where
  RecBole averages per-rank metrics that were already rounded to 4 decimals.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from typing import Any

import torch
import torch.distributed as dist

from acerec_recbole.errors import UsageError

BACKENDS = ("gloo", "nccl")
# RecBole's DataStruct entries that hold one row per evaluated user (everything else in the struct
# describes the whole dataset and is the same on every rank).
EVAL_ROW_KEYS = ("rec.topk", "rec.meanrank", "rec.score", "rec.items", "data.label")


def is_distributed(config: Any) -> bool:
    return not config["single_spec"]


def global_rank(config: Any) -> int:
    return int(config["local_rank"]) + int(config["offset"] or 0) if is_distributed(config) else 0


def choose_backend(requested: Any, use_cuda: bool) -> str:
    """``ddp_backend`` if set, else nccl for CUDA and gloo for CPU; refuses what cannot work here."""
    automatic = requested in (None, "", "None", "auto")
    backend = ("nccl" if use_cuda else "gloo") if automatic else str(requested).lower()
    if backend not in BACKENDS:
        raise UsageError(f"ddp_backend={requested!r} is not one of {', '.join(BACKENDS)} (or auto).")
    if backend == "nccl" and not (torch.cuda.is_available() and dist.is_nccl_available()):
        raise UsageError(
            "ddp_backend=nccl needs CUDA GPUs and a torch built with NCCL; this machine has "
            f"{'no GPU' if not torch.cuda.is_available() else 'a torch without NCCL'}. Use ddp_backend=gloo "
            "(the default without a GPU)."
        )
    return backend


def check_launch(nproc: int, world_size: int, group_offset: int, ip: str, port: int, backend: str) -> None:
    """Settings that would fail or hang once the ranks start are refused before any is started."""
    if nproc < 1:
        raise UsageError(f"--nproc={nproc}: the number of processes on this node must be at least 1.")
    if world_size < nproc:
        raise UsageError(
            f"--nproc={nproc} is more than --world_size={world_size}: world_size counts the processes of all "
            "nodes together (leave it out for a single node)."
        )
    if not 0 <= group_offset <= world_size - nproc:
        raise UsageError(
            f"--group_offset={group_offset} with --nproc={nproc} gives ranks "
            f"{group_offset}..{group_offset + nproc - 1}, "
            f"outside 0..{world_size - 1} (--world_size={world_size}). Node n starts at the sum of the nproc of "
            "the nodes before it; the node with --group_offset=0 hosts rank 0."
        )
    if not 0 < port < 65536:
        raise UsageError(f"--port={port} is not a TCP port (1-65535).")
    if backend == "nccl" and torch.cuda.device_count() < nproc:
        raise UsageError(
            f"--nproc={nproc} with nccl needs {nproc} GPUs on this node; it has {torch.cuda.device_count()}."
        )
    if group_offset == 0:  # this node hosts rank 0, which listens on ip:port
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            try:
                probe.bind((ip, port))
            except OSError as err:
                in_use = "in use" in str(err).lower() or getattr(err, "errno", None) == 98
                raise UsageError(
                    f"--ip={ip} --port={port}: rank 0 cannot listen there ("
                    + (
                        "the port is in use, perhaps by another run: choose another --port"
                        if in_use
                        else f"{err.strerror or err}; --ip must be an address of the node with --group_offset=0"
                    )
                    + ")."
                ) from None


def cpu_threads_per_rank(nproc: int) -> int:
    """Each rank's share of this node's cores (OMP_NUM_THREADS, when set, wins)."""
    if os.environ.get("OMP_NUM_THREADS"):
        return max(1, int(os.environ["OMP_NUM_THREADS"]))
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cores // nproc)


class ShardedSampler(torch.utils.data.Sampler[int]):
    """This rank's sample indices, in the order of its batches, without RecBole's repeated samples.

    The order of all ``size`` samples (a permutation from the loader's generator, the same on every rank,
    when shuffling) is cut into global batches of ``global_batch`` (rounded down to a multiple of
    ``world_size``, as RecBole does); each global batch is split into
    ``world_size`` near-equal parts and part ``rank`` is this rank's batch. Every sample is used once per
    pass overall. Training (``pad``) needs the same number of steps on every rank: only when the last
    global batch has fewer samples than ranks does a rank with no part take one sample of that batch
    again. Evaluation does not pad (a rank may have one batch fewer).
    """

    def __init__(
        self,
        size: int,
        global_batch: int,
        world_size: int,
        rank: int,
        shuffle: bool,
        generator: torch.Generator | None,
        pad: bool,
    ) -> None:
        self.size, self.world_size, self.rank = size, world_size, rank
        self.local_batch = max(1, global_batch // world_size)
        self.global_batch = self.local_batch * world_size
        self.shuffle, self.generator, self.pad = shuffle, generator, pad

    def __iter__(self) -> Iterator[int]:
        order = torch.randperm(self.size, generator=self.generator) if self.shuffle else torch.arange(self.size)
        yield from self._parts(order)

    def __len__(self) -> int:
        return len(self._parts(torch.arange(self.size)))

    def _parts(self, order: torch.Tensor) -> list[int]:
        mine: list[int] = []
        for start in range(0, self.size, self.global_batch):
            batch = order[start : start + self.global_batch]
            part = torch.tensor_split(batch, self.world_size)[self.rank]
            if len(part) == 0 and self.pad:
                part = batch[-1:]
            mine.extend(part.tolist())
        return mine

    def set_epoch(self, epoch: int) -> None:
        """RecBole calls this every epoch; the order already advances with the loader's generator (which the
        training state saves), so that a resumed run draws the same orders."""


def gather_eval_rows(struct: Any) -> None:
    """Replace the per-user rows of a RecBole evaluation struct by those of every rank (in rank order)."""
    mine = {key: struct.get(key) for key in EVAL_ROW_KEYS if key in struct}
    everyone: list[dict[str, torch.Tensor] | None] = [None] * dist.get_world_size()
    dist.all_gather_object(everyone, mine)
    for key in EVAL_ROW_KEYS:
        parts = [rows[key] for rows in everyone if rows and key in rows]
        if parts:
            struct.set(key, torch.cat(parts, dim=0))


class WholeSetEvaluator:
    """RecBole's evaluator applied to the rows of all ranks: metrics equal a single-process evaluation."""

    def __init__(self, evaluator: Any) -> None:
        self.evaluator = evaluator

    def evaluate(self, struct: Any) -> Any:
        gather_eval_rows(struct)
        return self.evaluator.evaluate(struct)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.evaluator, name)
