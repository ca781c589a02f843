"""Multi-process training (RecBole's DDP, gloo on CPU): sharding, launching, whole-set evaluation.

The launch tests run ``run_recbole.py --nproc=2`` as a user would, one thread per process, on ml-100k
with a small model, and evaluate the checkpoint it wrote again in this (single) process.
"""

from __future__ import annotations

import ast
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from test_resume import MODEL_ARGS, SMALL_ML100K, history

from acerec_recbole import Config
from acerec_recbole.distributed import ShardedSampler
from acerec_recbole.trainer import load_checkpoint

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("localhost", 0))
        return probe.getsockname()[1]


def epoch_of(size: int, batch: int, world: int, shuffle: bool, pad: bool, seed: int = 3) -> list[list[list[int]]]:
    """Each rank's batches for one pass, every rank with its own generator seeded alike (as the loaders are)."""
    ranks = []
    for rank in range(world):
        generator = torch.Generator().manual_seed(seed)
        sampler = ShardedSampler(size, batch, world, rank, shuffle, generator, pad)
        order = list(sampler)
        assert len(order) == len(sampler)
        ranks.append([order[i : i + sampler.local_batch] for i in range(0, len(order), sampler.local_batch)])
    return ranks


@pytest.mark.parametrize("size", [1, 5, 64, 65, 67, 97, 128])
@pytest.mark.parametrize("world", [2, 3])
def test_training_shards_see_every_sample_once_in_the_same_number_of_steps(size, world):
    batch = 32
    ranks = epoch_of(size, batch, world, shuffle=True, pad=True)
    assert len({len(batches) for batches in ranks}) == 1, "ranks with different step counts would hang DDP"
    assert len(ranks[0]) == -(-size // (batch // world * world)), "as many steps as one process takes"
    seen = [i for batches in ranks for batch_ in batches for i in batch_]
    assert set(seen) == set(range(size))
    remainder = size % (batch // world * world)
    repeats = world - remainder if 0 < remainder < world else 0  # only then may a rank have nothing of its own
    assert len(seen) == size + repeats
    # the order is a permutation drawn alike on every rank, and it changes between epochs
    generator = torch.Generator().manual_seed(3)
    sampler = ShardedSampler(size, batch, world, 0, True, generator, pad=True)
    if size > 5:
        assert list(sampler) != list(sampler)


@pytest.mark.parametrize("size", [1, 2, 7, 100])
def test_evaluation_shards_partition_the_users(size):
    ranks = epoch_of(size, 8, 2, shuffle=False, pad=False)
    seen = sorted(i for batches in ranks for batch_ in batches for i in batch_)
    assert seen == list(range(size))


def _ordered_rank(rank: int, port: int, log: str) -> None:
    import torch.distributed as dist

    from acerec_recbole.data.dataset import first_process_of_each_node

    dist.init_process_group("gloo", rank=rank, world_size=2, init_method=f"tcp://localhost:{port}")
    config = {"single_spec": False, "local_rank": rank}
    with first_process_of_each_node(config):
        with open(log, "a") as handle:
            handle.write(f"start {rank}\n")
        time.sleep(0.5 if rank == 0 else 0.0)
        with open(log, "a") as handle:
            handle.write(f"end {rank}\n")
    dist.destroy_process_group()


def test_semantic_ids_are_built_by_the_first_process_before_the_others_read_them(tmp_path):
    log = tmp_path / "order.txt"
    mp.spawn(_ordered_rank, args=(free_port(), str(log)), nprocs=2, join=True)
    assert log.read_text().split("\n")[:2] == ["start 0", "end 0"]


# one epoch: what CI can afford for two models in two processes each
ONE_EPOCH = [a if not a.startswith("--epochs=") else "--epochs=1" for a in SMALL_ML100K]


def cli(model: str, workdir: Path, sid_cache: Path, *extra: str) -> subprocess.CompletedProcess:
    args = [sys.executable, str(ROOT / "run_recbole.py"), f"--model={model}", *ONE_EPOCH, *MODEL_ARGS[model]]
    args += [f"--checkpoint_dir={workdir / 'saved'}", f"--sid_cache_dir={sid_cache}", *extra]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    return subprocess.run(args, cwd=workdir, env=env, capture_output=True, text=True, timeout=900)


@pytest.mark.slow
@pytest.mark.parametrize("model", ["ACERec", "SASRec"])
def test_two_processes_train_and_report_the_metrics_of_one_process(tmp_path, sid_cache, model):
    from recbole.data import create_dataset, data_preparation
    from recbole.utils import get_trainer, init_seed

    process = cli(model, tmp_path, sid_cache, "--nproc=2", f"--port={free_port()}")
    output = process.stdout + process.stderr
    assert process.returncode == 0, output[-3000:]
    lines = [x for x in process.stdout.splitlines() if x.startswith("test result: ")]
    assert len(lines) == 1, "rank 0 reports, once"
    ddp_test = ast.literal_eval(lines[0][len("test result: ") :])
    (checkpoint,) = (tmp_path / "saved").glob(f"{model}-*[0-9].pth")

    # the same weights evaluated by one process: the same metrics
    args = [a for a in ONE_EPOCH + MODEL_ARGS[model] if not a.startswith("--dataset")]
    config = Config(model, "ml-100k", cmd_args=args + [f"--sid_cache_dir={sid_cache}", "--state=WARNING"])
    init_seed(config["seed"], True)
    train, _, test = data_preparation(config, create_dataset(config))
    recommender = config.model_class(config, train.dataset)
    trainer = get_trainer(config["MODEL_TYPE"], config["model"])(config, recommender)
    single = trainer.evaluate(test, model_file=str(checkpoint))
    assert dict(single) == ddp_test


@pytest.mark.slow
def test_a_killed_two_process_run_resumes_to_the_same_result(tmp_path, sid_cache):
    """Four epochs in two processes, uninterrupted, and killed (all processes) in its second epoch then
    resumed: the same validation curve and test metrics, so each rank's generators were restored. Asked for
    states within epochs, a run of several processes still saves them at epoch ends only."""
    args = [sys.executable, str(ROOT / "run_recbole.py"), "--model=ACERec", *SMALL_ML100K, *MODEL_ARGS["ACERec"]]
    args += [f"--sid_cache_dir={sid_cache}", "--nproc=2"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}

    def start(folder: Path, *extra: str) -> subprocess.Popen:
        folder.mkdir(parents=True, exist_ok=True)
        return subprocess.Popen(
            [*args, f"--checkpoint_dir={folder / 'saved'}", f"--port={free_port()}", *extra],
            cwd=folder, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
        )  # fmt: skip

    def result(process: subprocess.Popen) -> tuple[str, str]:
        output = process.communicate(timeout=900)[0]
        assert process.returncode == 0, output[-3000:]
        return output, next(x for x in output.splitlines() if x.startswith("test result: "))

    _, whole_test = result(start(tmp_path / "whole"))
    every_batch = "--state_every_minutes=1e-9"  # ranks would have to agree on when: states at epoch ends only
    victim = start(tmp_path / "killed", every_batch)
    saved = tmp_path / "killed" / "saved"
    deadline = time.time() + 300
    while not list(saved.glob("*.state.pth")) and time.time() < deadline and victim.poll() is None:
        time.sleep(0.05)
    time.sleep(0.5)  # into the second epoch
    os.killpg(victim.pid, signal.SIGKILL)  # the launcher and both ranks
    victim.communicate()
    (state_file,) = saved.glob("*.state.pth")
    interrupted = load_checkpoint(state_file, required=("epoch_history",))
    assert not interrupted["finished"] and 1 <= len(interrupted["epoch_history"]) < 4
    assert len(interrupted["rng_by_rank"]) == 2 and interrupted["partial_epoch"] is None

    output, resumed_test = result(start(tmp_path / "killed", every_batch, "--resume=True"))
    assert "Resuming from" in output
    assert history(saved) == history(tmp_path / "whole" / "saved")
    assert resumed_test == whole_test


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--nproc=2", "--ddp_backend=nccl"], "ddp_backend=nccl needs CUDA GPUs"),
        (["--nproc=3", "--world_size=2"], "--nproc=3 is more than --world_size=2"),
        (["--nproc=2", "--world_size=4", "--group_offset=3"], "outside 0..3"),
        (["--nproc=2", "--port=PORT"], "the port is in use"),
    ],
)
def test_impossible_settings_are_refused_before_any_process_starts(tmp_path, flags, message):
    with socket.socket() as busy:
        busy.bind(("localhost", 0))
        busy.listen()
        port = busy.getsockname()[1]
        flags = [f.replace("PORT", str(port)) for f in flags]
        args = [sys.executable, str(ROOT / "run_recbole.py"), "--model=SASRec", "--dataset=ml-100k", *flags]
        process = subprocess.run(args, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert process.returncode == 2, process.stderr[-2000:]
    assert message in process.stderr and "Traceback" not in process.stderr
