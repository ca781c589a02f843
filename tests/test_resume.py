"""Interrupted runs: atomic checkpoints, per-epoch training states, ``--resume``, clear checkpoint errors.

The kill-and-resume tests run ``run_recbole.py`` as a user would, in subprocesses with one thread, on
ml-100k with a small model: one run uninterrupted, one killed (SIGKILL) during its second epoch and
then resumed. Both must end with the same validation curve, best epoch and test metrics.
"""

from __future__ import annotations

import ast
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import build_pipeline, fit_until_killed, toy_config

from acerec_recbole import run
from acerec_recbole.trainer import CheckpointError, SemanticIDTrainer, config_differences, load_checkpoint

ROOT = Path(__file__).resolve().parents[1]
SMALL_ML100K = [
    "--dataset=ml-100k",
    "--epochs=4",
    "--stopping_step=10",
    "--hidden_size=16",
    "--inner_size=32",
    "--n_layers=1",
    "--n_heads=1",
    "--MAX_ITEM_LIST_LENGTH=20",
    "--eval_batch_size=1024",
    "--seed=11",
]
MODEL_ARGS = {
    "SASRec": ["--train_batch_size=2048", "--learning_rate=0.005"],
    "ACERec": [
        "--sid_num_digits=8",
        "--sid_codebook_size=16",
        "--sid_opq_iters=5",
        "--merger_heads=1",
        "--num_latents=2",
        "--train_batch_size=256",
        "--learning_rate=0.005",
    ],
}


def cli(model: str, checkpoint_dir: Path, sid_cache: Path, *extra: str) -> subprocess.Popen:
    args = [sys.executable, str(ROOT / "run_recbole.py"), f"--model={model}", *SMALL_ML100K, *MODEL_ARGS[model]]
    args += [f"--checkpoint_dir={checkpoint_dir}", f"--sid_cache_dir={sid_cache}", *extra]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    return subprocess.Popen(args, cwd=checkpoint_dir.parent, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def finish(process: subprocess.Popen) -> tuple[str, dict]:
    output = process.communicate(timeout=600)[0].decode()
    assert process.returncode == 0, output[-3000:]
    line = next(x for x in output.splitlines() if x.startswith("test result: "))
    return output, ast.literal_eval(line[len("test result: ") :])


def history(checkpoint_dir: Path, keys: tuple[str, ...] = ("epoch", "valid_score")) -> list[tuple]:
    """Each epoch's ``keys`` from a finished run's training state."""
    (state_file,) = checkpoint_dir.glob("*.state.pth")
    state = load_checkpoint(state_file, required=("epoch_history",))
    assert state["finished"]
    return [tuple(h[key] for key in keys) for h in state["epoch_history"]]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, sid_cache):
    """Per model, one run that saves no state within epochs (RecBole's own epoch loop), shared by the
    kill-and-resume tests: its checkpoint folder and test result."""
    runs: dict[str, tuple[Path, dict]] = {}

    def get(model: str) -> tuple[Path, dict]:
        if model not in runs:
            folder = tmp_path_factory.mktemp(f"uninterrupted-{model}") / "saved"
            folder.mkdir()
            runs[model] = (folder, finish(cli(model, folder, sid_cache, "--state_every_minutes=0"))[1])
        return runs[model]

    return get


@pytest.mark.slow
@pytest.mark.parametrize("model", ["SASRec", "ACERec"])
def test_a_run_killed_mid_epoch_resumes_to_the_same_result(tmp_path, sid_cache, uninterrupted, model):
    whole_dir, whole_test = uninterrupted(model)
    killed_dir = tmp_path / "killed" / "saved"
    killed_dir.mkdir(parents=True)

    victim = cli(model, killed_dir, sid_cache)
    deadline = time.time() + 300
    while not list(killed_dir.glob("*.state.pth")) and time.time() < deadline and victim.poll() is None:
        time.sleep(0.05)
    time.sleep(0.5)  # into the second epoch
    victim.send_signal(signal.SIGKILL)
    victim.communicate()
    assert victim.returncode == -signal.SIGKILL
    (state_file,) = killed_dir.glob("*.state.pth")
    interrupted = load_checkpoint(state_file, required=("epoch_history",))
    assert not interrupted["finished"] and 1 <= len(interrupted["epoch_history"]) < 4

    output, resumed_test = finish(cli(model, killed_dir, sid_cache, "--resume=True"))
    assert "Resuming from" in output
    assert "Forecast from its" in output  # from the epochs it has run, not from a batch
    assert history(killed_dir) == history(whole_dir)  # same validation curve, so the same best epoch
    assert resumed_test == whole_test


@pytest.mark.slow
@pytest.mark.parametrize("model", ["SASRec", "ACERec"])
def test_a_run_killed_between_two_batches_resumes_from_that_batch_to_the_same_result(
    tmp_path, sid_cache, uninterrupted, model
):
    """``state_every_minutes``: states within an epoch. A tiny interval saves one after every batch; the
    run is killed in its second epoch with such a state on disk, resumed, and must end as a run that
    saved no state within epochs (RecBole's own epoch loop): same losses, validation curve and test."""
    plain_dir, plain_test = uninterrupted(model)
    killed_dir = tmp_path / "killed" / "saved"
    killed_dir.mkdir(parents=True)

    every_batch = "--state_every_minutes=1e-9"
    victim = cli(model, killed_dir, sid_cache, every_batch)
    deadline, partial = time.time() + 300, None
    while partial is None and time.time() < deadline and victim.poll() is None:
        for state_file in killed_dir.glob("*.state.pth"):
            where = load_checkpoint(state_file, required=("epoch_history",)).get("partial_epoch")
            partial = where if where and where["epoch"] == 1 and where["batches_done"] >= 2 else None
        time.sleep(0.02)
    victim.send_signal(signal.SIGKILL)
    victim.communicate()
    assert partial is not None, "the run never saved a state within its second epoch"
    (state_file,) = killed_dir.glob("*.state.pth")
    interrupted = load_checkpoint(state_file, required=("epoch_history",))
    assert interrupted["partial_epoch"]["epoch"] == 1 and len(interrupted["epoch_history"]) == 1

    output, resumed_test = finish(cli(model, killed_dir, sid_cache, every_batch, "--resume=True"))
    assert "batches of the next done" in output
    keys = ("epoch", "train_loss", "valid_score")
    assert history(killed_dir, keys) == history(plain_dir, keys)
    assert resumed_test == plain_test


def test_resume_with_nothing_to_resume_starts_fresh_and_a_changed_setting_is_refused(tmp_path, toy_data, sid_cache):
    settings = toy_config(toy_data, sid_cache, epochs=2, checkpoint_dir=str(tmp_path / "saved"))
    first = run("RPG", "toyshop", config_dict={**settings, "resume": True})  # nothing there yet: a fresh run
    assert [h["epoch"] for h in first["trainer"].epoch_history] == [1, 2]

    again = run("RPG", "toyshop", config_dict={**settings, "resume": True})  # finished: straight to the test
    assert again["test_result"] == first["test_result"]
    assert again["trainer"].epoch_history == first["trainer"].epoch_history

    with pytest.raises(CheckpointError, match=r"learning_rate: 0\.005 -> 0\.001"):
        run("RPG", "toyshop", config_dict={**settings, "resume": True, "learning_rate": 0.001})


def test_config_differences_ignore_paths_verbosity_and_keys_added_later_at_their_neutral_value():
    saved = {"learning_rate": 0.01, "data_path": "/a", "show_progress": True, "epochs": 5}
    assert config_differences(saved, {**saved, "data_path": "/b", "show_progress": False}) == []
    assert config_differences(saved, {**saved, "epochs": 6, "new_key": 1}) == ["epochs", "new_key"]
    # a key added to the package later: a state saved before it resumes where it has its neutral value
    assert config_differences(saved, {**saved, "reconstruction_weight": 0.0}) == []
    assert config_differences(saved, {**saved, "reconstruction_weight": 0.05}) == ["reconstruction_weight"]


def test_bad_checkpoints_are_named_with_what_is_wrong(tmp_path):
    empty = tmp_path / "empty.pth"
    empty.write_bytes(b"")
    with pytest.raises(CheckpointError, match=r"empty\.pth is empty \(0 bytes\)"):
        load_checkpoint(empty)
    good = tmp_path / "good.pth"
    torch.save({"state_dict": {"w": torch.zeros(1000)}, "config": {}}, good)
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(good.read_bytes()[:2000])
    with pytest.raises(CheckpointError, match=r"truncated\.pth is truncated or corrupt"):
        load_checkpoint(truncated)
    foreign = tmp_path / "foreign.pth"
    torch.save(torch.zeros(3), foreign)
    with pytest.raises(CheckpointError, match=r"foreign\.pth is not a RecBole model checkpoint"):
        load_checkpoint(foreign)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.pth")


KILL_DURING_SECOND_SAVE = """
import os, sys, torch
sys.path.insert(0, {root!r})
sys.path.insert(0, {tests!r})
from conftest import toy_config
from acerec_recbole import run
real_save, calls = torch.save, []
def dying_save(obj, handle, *args, **kwargs):
    calls.append(1)
    if len(calls) == 3:  # best checkpoint of epoch 1, its training state, then the epoch-2 checkpoint
        handle.write(b"PK" + bytes(100))  # a few bytes of the new file, then the process dies
        handle.flush()
        os._exit(9)
    return real_save(obj, handle, *args, **kwargs)
torch.save = dying_save
settings = toy_config(__import__("pathlib").Path({data!r}), __import__("pathlib").Path({cache!r}), epochs=3,
                      checkpoint_dir={saved!r}, learning_rate=0.05)
run("RPG", "toyshop", config_dict=settings)
"""


def test_a_kill_while_a_checkpoint_is_written_leaves_the_previous_one_intact(tmp_path, toy_data, sid_cache):
    saved = tmp_path / "saved"
    script = KILL_DURING_SECOND_SAVE.format(
        root=str(ROOT), tests=str(ROOT / "tests"), data=str(toy_data), cache=str(sid_cache), saved=str(saved)
    )
    process = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, timeout=300)
    assert process.returncode == 9, process.stdout.decode()[-2000:] + process.stderr.decode()[-2000:]
    (checkpoint,) = saved.glob("RPG-*[0-9].pth")
    assert load_checkpoint(checkpoint, required=("state_dict", "config"))["epoch"] == 0  # epoch 1's, whole
    assert load_checkpoint(next(saved.glob("*.state.pth")), required=("epoch_history",))["epoch"] == 0


FRESH_PROCESS_EVALUATION = """
import sys
sys.path.insert(0, {root!r})
import acerec_recbole
from recbole.quick_start import load_data_and_model
from recbole.utils import get_trainer
config, model, dataset, train, valid, test = load_data_and_model({checkpoint!r})
trainer = get_trainer(config["MODEL_TYPE"], config["model"])(config, model)
print("evaluate", dict(trainer.evaluate(test, load_best_model=False)))
trainer.resume_checkpoint({checkpoint!r})  # RecBole's own resume
trainer.epochs = 4  # train on from the checkpoint's epoch, then evaluate
trainer.fit(train, valid, saved=False)
print("resumed", dict(trainer.evaluate(test, load_best_model=False)))
"""


def test_recbole_load_and_resume_work_in_a_fresh_process(tmp_path, toy_data, sid_cache):
    result = run("RPG", "toyshop", config_dict=toy_config(toy_data, sid_cache, epochs=2))
    script = FRESH_PROCESS_EVALUATION.format(root=str(ROOT), checkpoint=result["model_file"])
    process = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, timeout=300)
    output = process.stdout.decode()
    assert process.returncode == 0, output[-2000:] + process.stderr.decode()[-3000:]
    evaluated = ast.literal_eval(next(x for x in output.splitlines() if x.startswith("evaluate "))[9:])
    assert evaluated == {k: round(v, 4) for k, v in result["test_result"].items()}
    assert "resumed " in output


def test_a_run_interrupted_while_gamma_is_annealed_resumes_to_the_same_result(tmp_path, toy_data, sid_cache):
    """``mtp_temperature_start``: the step count behind gamma's schedule is part of the training state, so a
    run stopped within an epoch of the annealing continues it exactly (same losses and validation curve)."""
    settings = {"epochs": 3, "mtp_temperature_start": 0.1, "mtp_temperature_anneal_ratio": 1.0}

    def trainer(folder: str, every_minutes: float):
        config, _, (train, valid, _), model = build_pipeline(
            "ACERec",
            toy_data,
            sid_cache,
            checkpoint_dir=str(tmp_path / folder),
            state_every_minutes=every_minutes,
            **settings,
        )
        return SemanticIDTrainer(config, model), train, valid

    whole, train, valid = trainer("whole", 0)
    whole.fit(train, valid)

    stopped, train, valid = trainer("stopped", 1e-9)  # a state after every optimiser step
    fit_until_killed(stopped, train, valid, len(train) + 1)  # in the second epoch
    state_file = Path(stopped.state_file)
    state = load_checkpoint(state_file, required=("optimiser_steps",))
    assert state["optimiser_steps"] == len(train) + 1 and state["partial_epoch"]["batches_done"] == 1
    gamma = 0.1 - 0.07 * (len(train) + 1) / (3 * len(train))  # gamma after those steps
    assert state["other_parameter"]["mtp_temperature"] == pytest.approx(gamma)

    resumed, train, valid = trainer("stopped", 1e-9)  # a new trainer and model, as in a new process
    resumed.resume(state_file)
    resumed.fit(train, valid)
    keys = ("epoch", "train_loss", "valid_score")
    assert [tuple(h[k] for k in keys) for h in resumed.epoch_history] == [
        tuple(h[k] for k in keys) for h in whole.epoch_history
    ]
    assert resumed.optimiser_steps == whole.optimiser_steps == 3 * len(train)
    assert resumed.model.mtp_temperature == whole.model.mtp_temperature == 0.03
