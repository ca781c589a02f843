"""The cost command: each model measured at its benchmark plan's settings, epoch times relative to SASRec."""

from __future__ import annotations

import pytest
import torch
from conftest import toy_config, write_plan

from acerec_recbole import speed
from acerec_recbole.errors import UsageError


@pytest.fixture()
def plan_file(toy_data, sid_cache, tmp_path):
    return write_plan(
        tmp_path / "toyshop.yaml",
        toy_config(toy_data, sid_cache, epochs=1),
        models=["RPG", "SASRec"],
        seeds=[3],
        sections={"SASRec": {"hidden_size": 16, "inner_size": 32}, "RPG-wide": {"model": "RPG", "hidden_size": 48}},
    )


RELATIVE = "seconds_per_epoch / SASRec's"


def test_speed_measures_each_model_at_its_plan_settings(plan_file):
    rows = speed.main(["--dataset=toyshop", f"--plan={plan_file}", "--profile=cpu", "--models=RPG,RPG-wide,SASRec"])

    measured = {r["model"]: r for r in rows if "hidden_size" in r}
    # the shared section, a variant's own section (named by its label, trained as its `model:`), SASRec's
    assert {m: r["hidden_size"] for m, r in measured.items()} == {"RPG": 32, "RPG-wide": 48, "SASRec": 16}
    assert measured["RPG-wide"]["params"] > measured["RPG"]["params"]
    assert all(r["seconds_per_epoch"] > 0 and r["full_sort_users_per_s"] > 0 for r in measured.values())

    relative = {r["model"]: r[RELATIVE] for r in rows if RELATIVE in r}
    assert relative["SASRec"] == 1.0
    for model in ("RPG", "RPG-wide"):
        expected = measured[model]["seconds_per_epoch"] / measured["SASRec"]["seconds_per_epoch"]
        assert relative[model] == pytest.approx(expected, abs=1e-3)


def test_speed_refuses_two_sources_of_the_hidden_size(plan_file):
    with pytest.raises(UsageError, match="--hidden_sizes and --profile"):
        speed.main(["--dataset=toyshop", f"--plan={plan_file}", "--profile=cpu", "--hidden_sizes=16"])


def test_speed_train_steps_reports_cpu_seconds_and_page_faults_per_step(plan_file):
    rows = speed.main(["--dataset=toyshop", f"--plan={plan_file}", "--profile=cpu", "--models=RPG", "--train_steps=4"])
    (row,) = rows
    assert row["model"] == "RPG" and row["steps"] == 4 and row["cpu_memory_reuse"] is True
    assert row["wall_s_per_step"] > 0 and row["user_s_per_step"] + row["kernel_s_per_step"] > 0
    assert row["minor_faults_per_step"] >= 0 and row["peak_rss_gib"] > 0
    assert "seconds_per_epoch" not in row  # steps, not an epoch


def table_rows(text: str, first_column: str) -> dict[str, list[str]]:
    """The rows of the printed markdown table whose header starts with ``first_column``, by first cell."""
    rows, inside = {}, False
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("|") and cells[0] == first_column:
            inside = True
        elif not line.startswith("|"):
            inside = False
        elif inside and not cells[0].startswith("---"):
            rows[cells[0]] = cells[1:]
    return rows


def test_speed_op_profile_says_which_model_part_and_operator_the_steps_spend_time_on(plan_file, capsys):
    speed.main(["--dataset=toyshop", f"--plan={plan_file}", "--profile=cpu", "--models=RPG", "--train_steps=4",
                "--op_profile=12"])  # fmt: skip
    out = capsys.readouterr().out

    parts = {k: float(v[0]) for k, v in table_rows(out, "part").items()}
    # the forward pass of RPG's own layers, each under its attribute name, then backward and optimiser
    assert {"forward: encoder", "forward: heads", "forward: tokens"} <= parts.keys()
    assert parts["forward: encoder"] > 0 and parts["backward"] > 0 and parts["optimiser step"] > 0
    assert parts["forward: encoder"] + parts["backward"] < parts["everything (self time of all ranges)"]
    operators = table_rows(out, "operator")
    assert len(operators) == 12 and not any(name.startswith("part:") for name in operators)
    # a matrix product among them (12, not fewer: on a loaded machine LayerNorm and GELU can outweigh it)
    assert any(name in operators for name in ("aten::mm", "aten::addmm", "aten::bmm"))
    shares = [float(v[2].rstrip("%")) for v in operators.values()]
    assert shares == sorted(shares, reverse=True) and 0 < sum(shares) <= 100.5


def test_op_profile_leaves_no_hooks_behind():
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.ReLU())
    with speed.op_profile(model, 3) as profile:
        model(torch.randn(2, 4)).sum().backward()
    assert profile is not None and any(e.key == "part:0" for e in profile.key_averages())
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())
    with speed.op_profile(model, 0) as nothing:
        assert nothing is None


def test_speed_op_profile_needs_train_steps(plan_file):
    with pytest.raises(UsageError, match="--op_profile profiles training steps"):
        speed.main(["--dataset=toyshop", f"--plan={plan_file}", "--profile=cpu", "--models=RPG", "--op_profile=5"])
