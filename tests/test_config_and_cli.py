"""Config layering and priority, model look-up, compatibility patches, the CLI entry point."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import SHARED_DATA, toy_config

import run_recbole
from acerec_recbole import Config, compat
from acerec_recbole.errors import UsageError


def test_properties_layering_and_priority(tmp_path, toy_data, sid_cache):
    # our model yaml (paper profile) sits above RecBole's defaults
    assert Config("ACERec", "ml-100k")["hidden_size"] == 448
    # ...our dataset yaml adds the item text fields
    assert Config("ACERec", "ml-100k")["sid_text_fields"] == ["movie_title", "release_year", "class"]
    first, second = tmp_path / "a.yaml", tmp_path / "b.yaml"
    first.write_text("hidden_size: 96\nn_layers: 3\n")
    second.write_text("hidden_size: 80\n")
    files = [str(first), str(second)]
    config = Config("ACERec", "ml-100k", config_file_list=files)
    assert (config["hidden_size"], config["n_layers"]) == (80, 3)  # later file wins
    config = Config("ACERec", "ml-100k", config_file_list=files, config_dict={"hidden_size": 72})
    assert config["hidden_size"] == 72  # config_dict > files
    config = Config(
        "ACERec",
        "ml-100k",
        config_file_list=files,
        config_dict={"hidden_size": 72},
        cmd_args=["--hidden_size=48", "--merger=mean"],
    )
    assert (config["hidden_size"], config["merger"]) == (48, "mean")  # command line > everything


def test_overrides_reach_the_model(tmp_path, toy_data, sid_cache):
    from recbole.data import create_dataset, data_preparation

    profile = tmp_path / "p.yaml"
    profile.write_text("hidden_size: 24\nnum_latents: 4\n")
    settings = toy_config(toy_data, sid_cache)
    del settings["hidden_size"], settings["num_latents"]  # left to the yaml file
    config = Config(
        "ACERec",
        "toyshop",
        config_file_list=[str(profile)],
        config_dict=settings,
        cmd_args=["--merger=conv", "--isa_weight=0.25"],
    )
    train = data_preparation(config, create_dataset(config))[0]
    model = config.model_class(config, train.dataset)
    assert model.tokens.weight.shape[1] == 24
    assert model.num_latents == 4 and model.block_size == 5
    assert type(model.merger).__name__ == "ConvMerger" and model.isa_weight == 0.25


def test_recbole_models_resolve_through_our_config():
    config = Config("GRU4Rec", "ml-100k")
    assert config.model_class.__module__.startswith("recbole.model")
    assert config["valid_metric"] == "NDCG@10"  # our overall defaults apply to baselines too


@pytest.mark.parametrize("text", ["3", "0.5", "1e-3", "true", "False", "None", "[1, 2]", "{'a': 1}", "abc", "ml-1m"])
def test_command_line_values_read_as_recbole_reads_them(text):
    """The benchmark keys runs by these values, so they must be the ones RecBole's Config trains with."""
    from recbole.config import Config as RecBoleConfig

    from acerec_recbole.config import cmd_arg_value

    expected = RecBoleConfig._convert_config_dict(None, {"key": text})["key"]
    assert cmd_arg_value(text) == expected and type(cmd_arg_value(text)) is type(expected)


def test_missing_config_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.yaml"):
        Config("SASRec", "ml-100k", config_file_list=[str(tmp_path / "nope.yaml")])


def test_compat_patches_are_in_place():
    compat.apply()
    assert not torch.is_anomaly_enabled()
    from recbole.quick_start import load_data_and_model, run_recbole  # imports despite ray  # noqa: F401
    from recbole.trainer import Trainer

    # RecBole's own checkpoints reload on torch >= 2.6 (exercised end to end in test_models)
    assert Trainer.evaluate.__acerec_trusting__ and load_data_and_model.__acerec_trusting__


def test_cli_runs_a_recbole_baseline_with_overrides(tmp_path, toy_data, sid_cache, capfd):
    """`run_recbole.py --model=SASRec` with --config_files and --key=value, on generated data."""
    extra = tmp_path / "extra.yaml"
    extra.write_text(
        "hidden_size: 16\ninner_size: 32\nn_layers: 1\nn_heads: 1\nload_col: {inter: [user_id, item_id, timestamp]}\n"
    )
    result = run_recbole.main(
        [
            "--model=SASRec",
            "--dataset=toyshop",
            f"--data_path={toy_data}",
            f"--config_files={extra}",
            "--epochs=1",
            "--train_batch_size=128",
            "--state=WARNING",
            f"--checkpoint_dir={tmp_path / 'saved'}",
        ]
    )
    assert result["config"]["hidden_size"] == 16 and result["config"]["epochs"] == 1
    assert 0 <= result["test_result"]["ndcg@10"] <= 1
    assert f"checkpoint: {result['model_file']}" in capfd.readouterr().out


def test_the_terminal_gets_a_summary_and_the_log_file_the_details(tmp_path):
    """A real process (pytest replaces RecBole's log handlers): ~15 lines on the terminal, no warnings."""
    process = subprocess.run(
        [sys.executable, str(run_recbole.__file__), "--model=Pop", "--dataset=ml-100k"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    output = process.stdout + process.stderr
    assert process.returncode == 0, output[-2000:]
    assert "General Hyper Parameters" not in output and "Warning" not in output
    assert len(output.splitlines()) < 30
    log_file = next(line[len("log: ") :] for line in process.stdout.splitlines() if line.startswith("log: "))
    assert "General Hyper Parameters" in Path(log_file).read_text()
    assert (tmp_path / next(x for x in process.stdout.splitlines() if x.startswith("checkpoint: "))[12:]).is_file()


@pytest.mark.skipif(not (SHARED_DATA / "ml-1m" / "ml-1m.inter").exists(), reason="../shared/data/ml-1m not present")
def test_shared_ml1m_loads_with_our_dataset_properties():
    from recbole.data.dataset import Dataset

    config = Config("SASRec", "ml-1m", config_dict={"data_path": str(SHARED_DATA), "state": "WARNING"})
    dataset = Dataset(config)  # plain Dataset: checks the files and our load_col, skips augmentation
    assert dataset.user_num == 6041 and dataset.inter_num == 1000209
    assert "movie_title" in dataset.item_feat


def test_ml100k_honours_an_explicit_data_path_holding_it(tmp_path):
    """RecBole hard-codes ml-100k to its bundled copy; an explicit data_path with an ml-100k folder wins."""
    bundled = Config("SASRec", "ml-100k")["data_path"]
    assert bundled.endswith("dataset_example/ml-100k")
    assert Config("SASRec", "ml-100k", config_dict={"data_path": str(tmp_path)})["data_path"] == bundled
    (tmp_path / "ml-100k").mkdir()
    chosen = Config("SASRec", "ml-100k", cmd_args=[f"--data_path={tmp_path}"])["data_path"]
    assert chosen == str(tmp_path / "ml-100k")


def test_acerec_and_rpg_get_the_profile_of_the_hardware_and_keep_it_with_other_flags():
    cpu_files, line = run_recbole.choose_profile("ACERec", "auto", gpu=False)
    assert cpu_files == [str(run_recbole.CPU_PROFILE)] and "Profile: cpu (no GPU found" in line
    assert run_recbole.choose_profile("RPG", "auto", gpu=True)[0] == []  # paper profile on a GPU
    assert run_recbole.choose_profile("SASRec", "auto", gpu=False) == ([], "")  # RecBole's models: untouched
    with pytest.raises(SystemExit) as stop:
        run_recbole.choose_profile("ACERec", "fast", gpu=False)
    assert stop.value.code == 2
    # any other flag keeps the profile: it is a layer beneath --config_files and --key=value
    config = Config("ACERec", "ml-100k", cpu_files, cmd_args=["--epochs=5"])
    assert config["hidden_size"] == 64 and config["epochs"] == 5
    assert Config("ACERec", "ml-100k", cmd_args=["--epochs=5"])["hidden_size"] == 448


@pytest.mark.parametrize(
    ("argument", "message"),
    [
        ("--epochs=abc", "--epochs=abc: epochs must be a number (its default is"),
        ("--model=ACERc", "Unknown model 'ACERc'"),
        ("--dataset=ml-10kk", "Dataset 'ml-10kk' is not at"),
    ],
)
def test_usage_mistakes_exit_2_with_one_message_and_no_traceback(argument, message, capsys, monkeypatch):
    monkeypatch.delenv("ACEREC_DEBUG", raising=False)
    with pytest.raises(SystemExit) as stop:
        run_recbole.main([argument])
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("run_recbole.py: error: ") and message in err and "Traceback" not in err
    assert len(err.strip().splitlines()) <= 2
    with pytest.raises(ValueError, match=message.split(":")[0] if argument == "--epochs=abc" else message):
        run_recbole.main([argument, "--debug"])  # --debug: the exception itself, with its traceback


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ({"num_latents": 0}, "num_latents=0 is not allowed: num_latents must be an integer >= 1"),
        ({"num_latents": -2, "anchor": "last"}, "num_latents=-2 is not allowed"),
        ({"isa_weight": -1}, "isa_weight=-1 is not allowed: isa_weight must be a number >= 0"),
        ({"mtp_temperature": 0}, "mtp_temperature=0 is not allowed: mtp_temperature must be a number > 0"),
        ({"isa_temperature": 0.0}, "isa_temperature=0.0 is not allowed"),
        ({"mtp_temperature_start": -0.1}, "mtp_temperature_start=-0.1 is not allowed: mtp_temperature_start must be a"),
        ({"mtp_temperature_anneal_ratio": 1.5}, "mtp_temperature_anneal_ratio=1.5 is not allowed"),
        ({"token_init_std": 0}, "token_init_std=0 is not allowed: token_init_std must be a number > 0"),
        (
            {"output_token_init_std": -1},
            "output_token_init_std=-1 is not allowed: output_token_init_std must be a number > 0",
        ),
        ({"ema_decay": 1.0}, "ema_decay=1.0 is not allowed: ema_decay must be a number >= 0 and < 1"),
        ({"warmup_steps": 0}, "warmup_steps=0 is not allowed: warmup_steps must be an integer >= 1"),
        ({"adam_beta2": 1}, "adam_beta2=1 is not allowed: adam_beta2 must be a number >= 0 and < 1"),
        ({"attn_qk_norm": "yes"}, "attn_qk_norm='yes' is not allowed: attn_qk_norm must be one of True, False"),
        (
            {"output_token_init_std": 0.1},
            "output_token_init_std=0.1 applies to an untied output table only: set tie_output_tokens: False",
        ),
        (
            {"tie_output_tokens": "no"},
            "tie_output_tokens='no' is not allowed: tie_output_tokens must be one of True, False",
        ),
        (
            {"mtp_label_smoothing": 1},
            "mtp_label_smoothing=1 is not allowed: mtp_label_smoothing must be a number >= 0 and < 1",
        ),
        (
            {"hidden_dropout_prob": 1.0},
            "hidden_dropout_prob=1.0 is not allowed: hidden_dropout_prob must be a number >= 0 and < 1",
        ),
        ({"merger": "pool"}, "merger='pool' is not allowed: merger must be one of attn, mean, mlp, conv"),
        ({"sid_codebook_size": 100}, "sid_codebook_size=100 is not allowed"),
    ],
)
def test_bad_model_settings_are_refused_before_any_work_naming_the_key(setting, message):
    with pytest.raises(UsageError, match=re.escape(message)):
        Config("ACERec", "ml-100k", config_dict=setting)
