"""The benchmark command end to end on the generated dataset: runs, resume, reproducibility, outputs."""

from __future__ import annotations

import csv
import json

import pytest
import yaml
from conftest import toy_config, write_plan

from acerec_recbole import benchmark
from acerec_recbole.errors import UsageError


@pytest.fixture()
def plan_file(toy_data, sid_cache, tmp_path):
    return write_plan(
        tmp_path / "toyshop.yaml",
        toy_config(toy_data, sid_cache, epochs=2),
        models=["RPG", "SASRec", "Pop"],
        seeds=[3, 4],
        sections={"SASRec": {"hidden_size": 16, "inner_size": 32}},
    )


def test_benchmark_writes_tables_plot_configs_and_reproduces(plan_file, tmp_path, capsys):
    results = tmp_path / "results"
    argv = ["--dataset=toyshop", f"--plan={plan_file}", f"--results_dir={results}"]
    summary = benchmark.main(argv)

    assert [s["model"] for s in summary] == ["RPG", "SASRec", "Pop"] and all(s["seeds"] == 2 for s in summary)
    for name in ("RPG-seed3", "RPG-seed4", "SASRec-seed3", "SASRec-seed4"):
        record = json.loads((results / "runs" / name / "run.json").read_text())
        assert record["epochs_run"] == len(record["history"]) == 2
        assert all("ndcg@10" in h for h in record["history"])
        assert record["full_sort_users_per_s"] > 0 and record["peak_rss_gib"] > 0
        config = yaml.safe_load((results / "runs" / name / "config.yaml").read_text())
        assert config["seed"] == record["seed"] and config["model"] == record["model"]
        assert not list((results / "runs" / name / "saved").glob("*.pth"))
        assert (results / "logs" / f"{name}.log").stat().st_size > 0
    assert config["hidden_size"] == 16  # the per-model section reached SASRec only
    digests = {
        json.loads((results / "runs" / n / "run.json").read_text())["semantic_ids_sha256"]
        for n in ("RPG-seed3", "RPG-seed4")
    }
    assert len(digests) == 1 and len(digests.pop()) == 16  # both seeds trained on the same codes, named
    assert json.loads((results / "runs/SASRec-seed3/run.json").read_text())["semantic_ids_sha256"] is None
    assert json.loads((results / "runs/RPG-seed3/run.json").read_text())["hidden_size"] == 32

    with open(results / "results.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [(r["model"], r["seed"]) for r in rows] == [
        ("RPG", "3"), ("RPG", "4"), ("SASRec", "3"), ("SASRec", "4"), ("Pop", "3"), ("Pop", "4"),
        ("RPG", "mean"), ("RPG", "std"), ("SASRec", "mean"), ("SASRec", "std"), ("Pop", "mean"), ("Pop", "std"),
    ]  # fmt: skip
    per_seed = [float(r["test_ndcg@10"]) for r in rows[:2]]
    assert float(rows[6]["test_ndcg@10"]) == pytest.approx(sum(per_seed) / 2, rel=1e-4)
    markdown = (results / "results.md").read_text()
    assert "| RPG | 2 |" in markdown and "python run_recbole.py --model=SASRec" in markdown
    assert float(rows[10]["test_ndcg@10"]) < float(rows[6]["test_ndcg@10"])  # Pop below RPG
    assert "| Pop | 2 |" in markdown
    # the first model's lead over each other one, against twice the larger seed std, from the same figures
    stats = {(r["model"], r["seed"]): r for r in rows}
    section = markdown.split("## Margins of RPG")[1].split("## Per seed")[0].splitlines()
    for other in ("SASRec", "Pop"):
        cells = next(line for line in section if line.startswith(f"| {other} |")).strip("| ").split(" | ")
        for offset, key in ((1, "test_ndcg@10"), (4, "valid_ndcg@10")):
            lead = float(stats["RPG", "mean"][key]) - float(stats[other, "mean"][key])
            bar = 2 * max(float(stats["RPG", "std"][key]), float(stats[other, "std"][key]))
            assert float(cells[offset]) == pytest.approx(lead, abs=1e-4)
            assert float(cells[offset + 1]) == pytest.approx(bar, abs=1e-4)
            assert cells[offset + 2] == ("yes" if lead > bar else "no")
    assert (results / "valid_ndcg10.png").read_bytes()[:4] == b"\x89PNG"

    # unchanged settings: kept, not trained again
    before = (results / "runs/RPG-seed3/run.json").read_text()
    capsys.readouterr()
    summary = benchmark.main(argv + ["--models=RPG", "--seeds=3"])
    assert "finished earlier with the same settings, kept" in capsys.readouterr().out
    # running one model leaves the others in the tables
    assert [(s["model"], s["seeds"]) for s in summary] == [("RPG", 2), ("SASRec", 2), ("Pop", 2)]
    # forced rerun: the same seed gives the same numbers
    benchmark.main(argv + ["--models=RPG", "--seeds=3", "--rerun"])
    again = json.loads((results / "runs/RPG-seed3/run.json").read_text())
    assert again["test"] == json.loads(before)["test"]
    assert [h["ndcg@10"] for h in again["history"]] == [h["ndcg@10"] for h in json.loads(before)["history"]]

    # settings changed since: the old runs stay on disk but leave the tables, named with the fix
    capsys.readouterr()
    summary = benchmark.main(argv + ["--summarise_only", "--learning_rate=0.5"])
    out = capsys.readouterr().out
    assert "Left out of the tables: runs/RPG-seed3" in out and "--models=RPG --seeds=3" in out
    assert summary == [] and (results / "runs/RPG-seed3/run.json").is_file()


def test_benchmark_errors_name_the_missing_file_or_profile(plan_file):
    with pytest.raises(FileNotFoundError, match="No benchmark settings for dataset 'nowhere'"):
        benchmark.main(["--dataset=nowhere"])
    with pytest.raises(ValueError, match="no profile 'gpu'"):
        benchmark.main(["--dataset=toyshop", f"--plan={plan_file}", "--profile=gpu"])


def test_an_interrupted_benchmark_run_continues_from_its_last_epoch(plan_file, tmp_path, capsys):
    """Kill a benchmark run (SIGKILL) after its first epoch; the next benchmark call finishes it."""
    import os
    import signal
    import subprocess
    import sys
    import time

    results = tmp_path / "results"
    argv = ["--dataset=toyshop", f"--plan={plan_file}", f"--results_dir={results}", "--models=RPG", "--seeds=3"]
    plan = benchmark.load_plan("toyshop", "cpu", str(plan_file))
    spec = benchmark.run_spec(plan, "RPG", "toyshop", 3, [], ["--epochs=8", "--state=INFO"])  # INFO: epochs in the log
    out = results / "runs" / "RPG-seed3"
    out.mkdir(parents=True)
    (out / "spec.json").write_text(json.dumps(spec))
    env = {**os.environ, "PYTHONPATH": str(benchmark.PROJECT_ROOT)}
    log = results / "logs" / "RPG-seed3.log"  # where the benchmark itself sends a run's output
    log.parent.mkdir(parents=True)
    handle = log.open("w")
    child = subprocess.Popen(
        [sys.executable, "-m", "acerec_recbole.benchmark", f"--run_spec={out / 'spec.json'}"],
        cwd=tmp_path, env=env, stdout=handle, stderr=subprocess.STDOUT,
    )  # fmt: skip
    deadline = time.time() + 300
    while not list((out / "saved").glob("*.state.pth")) and time.time() < deadline and child.poll() is None:
        time.sleep(0.02)
    child.send_signal(signal.SIGKILL)
    child.wait()
    handle.close()
    assert not (out / "run.json").exists()

    capsys.readouterr()
    benchmark.main(argv + ["--epochs=8", "--state=INFO"])
    assert "continuing an interrupted run from its last training state" in capsys.readouterr().out
    record = json.loads((out / "run.json").read_text())
    assert [h["epoch"] for h in record["history"]] == list(range(1, 9))
    assert not list((out / "saved").glob("*.pth"))  # weights and states are removed once the run is recorded
    first, _, continued = log.read_text().partition("continued")  # the first part of the log is kept
    assert "epoch 0 training" in first and "epoch 7 training" in continued


def test_stopping_the_benchmark_stops_its_run_too(plan_file, tmp_path):
    """SIGTERM to the benchmark (kill, a scheduler's limit) must not leave its training process running alone."""
    import os
    import signal
    import subprocess
    import sys
    import time

    import psutil

    results = tmp_path / "results"
    env = {**os.environ, "PYTHONPATH": str(benchmark.PROJECT_ROOT)}
    argv = ["--dataset=toyshop", f"--plan={plan_file}", f"--results_dir={results}", "--models=RPG", "--seeds=3"]
    parent = subprocess.Popen(
        [sys.executable, "-m", "acerec_recbole.benchmark", *argv, "--epochs=500", "--stopping_step=500"],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    runs: list[psutil.Process] = []
    try:
        deadline = time.time() + 300  # until the run has its first training state: it is training
        while not list((results / "runs" / "RPG-seed3" / "saved").glob("*.state.pth")) and time.time() < deadline:
            assert parent.poll() is None, parent.stdout.read()
            time.sleep(0.05)
        runs = psutil.Process(parent.pid).children()
        assert len(runs) == 1 and "--run_spec" in " ".join(runs[0].cmdline())
        parent.send_signal(signal.SIGTERM)
        output, _ = parent.communicate(timeout=120)
        assert not runs[0].is_running(), "the run outlived the benchmark"
        assert parent.returncode == 128 + signal.SIGTERM
        assert "stopped by SIGTERM" in output
        assert not (results / "runs" / "RPG-seed3" / "run.json").exists()
        assert list((results / "runs" / "RPG-seed3" / "saved").glob("*.state.pth"))  # kept for resuming
    finally:
        for run in runs:
            if run.is_running():
                run.kill()
        parent.kill()


def test_a_named_variant_trains_its_model_class_under_its_own_name(plan_file, tmp_path):
    """Ablation rows: a plan section with a `model:` key, e.g. `ACERec-mean: {model: ACERec, merger: mean}`."""
    plan = yaml.safe_load(plan_file.read_text())
    plan["profiles"]["cpu"]["RPG-narrow"] = {"model": "RPG", "hidden_size": 16, "inner_size": 32}
    plan_file.write_text(yaml.safe_dump(plan))
    results = tmp_path / "results"
    argv = ["--dataset=toyshop", f"--plan={plan_file}", f"--results_dir={results}", "--models=RPG-narrow", "--seeds=3"]
    summary = benchmark.main(argv)
    assert [s["model"] for s in summary] == ["RPG-narrow"]
    record = json.loads((results / "runs/RPG-narrow-seed3/run.json").read_text())
    assert record["model"] == "RPG-narrow" and record["hidden_size"] == 16
    assert record["reproduce"].startswith("python run_recbole.py --model=RPG --dataset=toyshop")
    assert yaml.safe_load((results / "runs/RPG-narrow-seed3/config.yaml").read_text())["model"] == "RPG"


def test_reproduce_commands_say_each_setting_once_and_help_lists_key_value(plan_file, capsys):
    plan = benchmark.load_plan("toyshop", "cpu", str(plan_file))
    spec = benchmark.run_spec(plan, "RPG", "toyshop", 3, [], ["--epochs=1"])
    command = benchmark.reproduce_command(spec)
    assert "--epochs=1" in command and "--epochs=2" not in command  # the plan says 2, the command line 1
    twice = benchmark.run_spec(plan, "RPG", "toyshop", 3, [], ["--epochs=1", "--epochs=1"])
    assert benchmark.reproduce_command(twice).count("--epochs=2") == 0 and twice["key"] == spec["key"]
    with pytest.raises(UsageError, match="--epochs is given twice"):  # refused before any run starts
        benchmark.run_spec(plan, "RPG", "toyshop", 3, [], ["--epochs=1", "--epochs=3"])
    located = benchmark.run_spec(plan, "RPG", "toyshop", 3, [], [f"--data_path={benchmark.PROJECT_ROOT.parent / 'd'}"])
    assert located["cmd_args"][0].startswith("--data_path=/")  # runs get an absolute path ...
    assert "--data_path=../d" in benchmark.reproduce_command(located).split()  # ... results.md a portable one
    with pytest.raises(SystemExit):
        benchmark.main(["--help"])
    usage = capsys.readouterr().out
    assert "--data_path=DIR" in usage and "--key=value" in usage
    assert "--data_path=../shared/data \\\n" in usage  # the example keeps its line breaks


def test_a_candidate_run_is_kept_once_the_plan_adopts_its_command_line_settings(plan_file, tmp_path, capsys):
    """A validation candidate (`--hidden_size=16`) is the same run as the plan that later says `hidden_size: 16`."""
    results = tmp_path / "results"
    argv = ["--dataset=toyshop", f"--plan={plan_file}", f"--results_dir={results}", "--models=RPG", "--seeds=3"]
    benchmark.main(argv + ["--hidden_size=16", "--inner_size=32", "--item_token_norm=true"])
    plan = yaml.safe_load(plan_file.read_text())
    plan["profiles"]["cpu"]["RPG"] = {"hidden_size": 16, "inner_size": 32, "item_token_norm": True}
    plan_file.write_text(yaml.safe_dump(plan))
    capsys.readouterr()
    benchmark.main(argv)
    assert "finished earlier with the same settings, kept" in capsys.readouterr().out
    adopted = benchmark.load_plan("toyshop", "cpu", str(plan_file))
    key = benchmark.run_spec(adopted, "RPG", "toyshop", 3, [], [])["key"]
    assert key == benchmark.run_spec(adopted, "RPG", "toyshop", 3, [], ["--hidden_size=16"])["key"]
    assert key != benchmark.run_spec(adopted, "RPG", "toyshop", 3, [], ["--hidden_size=24"])["key"]
    assert key != benchmark.run_spec(adopted, "RPG", "toyshop", 3, [], ["--hidden_size=16.5"])["key"]


def test_keep_weights_keeps_the_best_model_for_analysis_and_not_the_run_key(plan_file, tmp_path, capsys):
    from acerec_recbole import target_popularity

    results = tmp_path / "results"
    argv = ["--dataset=toyshop", f"--plan={plan_file}", f"--results_dir={results}", "--models=RPG", "--seeds=3"]
    benchmark.main(argv + ["--keep_weights"])
    saved = list((results / "runs" / "RPG-seed3" / "saved").glob("*.pth"))
    assert len(saved) == 1 and not saved[0].name.endswith(".state.pth")  # the best model; no training state
    record = json.loads((results / "runs" / "RPG-seed3" / "run.json").read_text())
    report = target_popularity.main([f"--checkpoint={saved[0]}"])[0]
    assert report["valid"][-1]["ndcg"] == pytest.approx(record["valid"]["ndcg@10"], abs=1e-4)
    assert report["test"][-1]["ndcg"] == pytest.approx(record["test"]["ndcg@10"], abs=1e-4)
    capsys.readouterr()
    benchmark.main(argv)  # keeping weights is not a setting: the run is the same run
    assert "finished earlier with the same settings, kept" in capsys.readouterr().out
