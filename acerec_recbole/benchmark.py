r"""Side-by-side benchmark: every model through the same RecBole pipeline, several seeds, one results folder.

    python -m acerec_recbole.benchmark --dataset=amazon2014-beauty --data_path=../shared/data \
        [--models=ACERec,RPG,SASRec] [--seeds=2020,2021] [--profile=cpu|paper] \
        [--config_files="a.yaml b.yaml"] [--results_dir=results/cpu/amazon2014-beauty] [--key=value ...]

Settings come from ``properties/benchmark/<dataset>.yaml`` (models, seeds and per-profile settings for
all models and per model); ``--config_files`` and ``--key=value`` apply to every model on top. The
protocol (leave-one-out, full ranking, Recall/NDCG@5/10, selection on validation NDCG@10) is
``properties/overall.yaml``'s and is the same for every model.

Each (model, seed) runs in its own process (so peak memory is its own) and writes
``runs/<model>-seed<seed>/{run.json, config.yaml}`` and ``logs/<model>-seed<seed>.log``. A finished run
whose settings are unchanged is not run again, so an interrupted benchmark resumes where it stopped;
``--rerun`` forces it. Weights are deleted once a run is recorded; ``--keep_weights`` keeps each run's
best model in ``runs/<model>-seed<seed>/saved/``. The summary (``results.md``, ``results.csv``,
``valid_ndcg10.png``) is rebuilt from every finished run made with the current settings (others are
named and left out) each time; ``--summarise_only`` rebuilds it without training.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import math
import os
import resource
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from acerec_recbole.config import cmd_arg_value, parse_cmd_args
from acerec_recbole.errors import MissingInputError, UsageError, usage_errors_exit

PROJECT_ROOT = Path(__file__).resolve().parent.parent
BENCHMARK_PROPERTIES = PROJECT_ROOT / "properties" / "benchmark"
METRICS = ("recall@5", "recall@10", "ndcg@5", "ndcg@10")


# ----------------------------------------------------------------------------------------- run plan


def load_plan(dataset: str, profile: str, plan_file: str | None = None) -> dict[str, Any]:
    """Read the dataset's benchmark yaml: ``models``, ``seeds`` and ``profiles.<profile>.{all, <Model>}``."""
    path = Path(plan_file) if plan_file else BENCHMARK_PROPERTIES / f"{dataset}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in BENCHMARK_PROPERTIES.glob("*.yaml"))
        raise MissingInputError(
            f"No benchmark settings for dataset '{dataset}': {path} does not exist. Known: {known}. "
            "Copy one of them (or pass --plan=<file>)."
        )
    plan = yaml.safe_load(path.read_text()) or {}
    profiles = plan.get("profiles", {})
    if profile not in profiles:
        raise UsageError(f"{path} has no profile '{profile}'; it has {sorted(profiles)}. Use --profile=<one of them>.")
    settings = profiles[profile] or {}
    return {"file": str(path), "models": plan.get("models", []), "seeds": plan.get("seeds", [2020]), **settings}


def run_spec(plan: dict[str, Any], model: str, dataset: str, seed: int, config_files: list[str], cmd_args: list[str]):
    """Everything that determines one run. Its key (settings and config-file contents, not where the
    files or the data live) decides whether a finished run can be reused."""
    config_dict = {**(plan.get("all") or {}), **(plan.get(model) or {}), "seed": int(seed), "reproducibility": True}
    config_dict.setdefault("show_progress", False)
    # a named variant (e.g. an ablation "ACERec-mean") says which model it trains with a `model:` key
    model_class = config_dict.pop("model", model)
    cmd_args = [absolute_data_path(arg) for arg in cmd_args]
    spec = {
        "model": model,
        **({"model_class": model_class} if model_class != model else {}),
        "dataset": dataset,
        "seed": int(seed),
        "config_files": [str(Path(f).resolve()) for f in config_files],
        "config_dict": config_dict,
        "cmd_args": cmd_args,
    }
    # a setting is the same run whether the yaml or the command line gives it, so that a validation
    # candidate (--hidden_size=192) is kept once the plan adopts it; with no --key=value the identity
    # is what it always was, so finished runs keep their keys
    folded, unfolded = command_line_settings([a for a in cmd_args if not a.startswith("--data_path=")])
    identity = {
        **{k: v for k, v in spec.items() if k not in ("config_files", "cmd_args")},
        "config_dict": {**config_dict, **folded},
        "cmd_args": unfolded,
        "config_files": [Path(f).read_text() for f in spec["config_files"]],
    }
    spec["key"] = hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:16]
    return spec


def command_line_settings(cmd_args: list[str]) -> tuple[dict[str, Any], list[str]]:
    """``--key=value`` arguments as the values RecBole reads from them, and the arguments that are not
    of that form. A key given twice with different values is refused here, before any run starts."""
    parsed, others = parse_cmd_args(cmd_args)
    return {key: cmd_arg_value(text) for key, text in parsed.items()}, others


def absolute_data_path(arg: str) -> str:
    """Runs execute inside the results folder, so a relative --data_path must be made absolute."""
    if arg.startswith("--data_path="):
        return "--data_path=" + str(Path(arg.split("=", 1)[1]).expanduser().resolve())
    return arg


def reproduce_command(spec: dict[str, Any]) -> str:
    """The run_recbole.py command that trains the same run alone."""
    model = spec.get("model_class", spec["model"])
    parts = [f"python run_recbole.py --model={model} --dataset={spec['dataset']}"]
    if model in ("ACERec", "RPG"):  # runs start from properties/model/<Model>.yaml, not the CLI's CPU profile
        parts.append("--profile=paper")
    if spec["config_files"]:
        parts.append('--config_files="' + " ".join(spec["config_files"]) + '"')
    overridden = set(parse_cmd_args(spec["cmd_args"])[0])
    for key, value in spec["config_dict"].items():
        if key in ("show_progress", "checkpoint_dir") or key in overridden:  # the command line wins: say it once
            continue
        parts.append(f"--{key}={json.dumps(value) if isinstance(value, (list, dict)) else value}")
    parts.extend(portable_data_path(arg) for arg in spec["cmd_args"])
    return " ".join(parts)


def portable_data_path(arg: str) -> str:
    """Runs need an absolute --data_path; the reproduce command shows it relative to the project root,
    so that results.md does not carry one machine's directory layout."""
    if arg.startswith("--data_path="):
        return "--data_path=" + os.path.relpath(arg.split("=", 1)[1], PROJECT_ROOT)
    return arg


# ------------------------------------------------------------------------------------- one run (child)


def peak_rss_gib() -> float:
    """Peak resident memory of this process so far (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def run_one(spec_file: Path) -> dict[str, Any]:
    """Train + test one (model, seed); record per-epoch validation NDCG@10 and times; write run.json."""
    from acerec_recbole import run
    from acerec_recbole.semantic_ids import codes_digest
    from acerec_recbole.trainer import plain

    spec = json.loads(spec_file.read_text())
    out = spec_file.parent
    # resume=True: a run killed mid-way continues from its last training state (saved/*.state.pth)
    config_dict = {**spec["config_dict"], "checkpoint_dir": str(out / "saved"), "resume": True}
    model = spec.get("model_class", spec["model"])
    result = run(model, spec["dataset"], spec["config_files"] or None, config_dict, spec["cmd_args"])
    history = result["trainer"].epoch_history
    config = result["config"]
    (out / "config.yaml").write_text(yaml.safe_dump(plain(config.final_config_dict), sort_keys=True))
    codes = getattr(result["model"], "item_codes", None)
    scored = [h for h in history if "valid_score" in h]
    best_epoch = max(scored, key=lambda h: h["valid_score"])["epoch"] if scored else None
    record = {
        "key": spec["key"],
        "model": spec["model"],
        "dataset": spec["dataset"],
        "seed": spec["seed"],
        "reproduce": reproduce_command(spec),
        "params": sum(p.numel() for p in result["model"].parameters()),
        # the exact semantic IDs the model was trained and tested with (resumed runs: the checkpoint's)
        "semantic_ids_sha256": codes_digest(codes.cpu().numpy()) if codes is not None else None,
        "hidden_size": config["hidden_size"],
        "train_batch_size": config["train_batch_size"],
        "epochs_run": len(history),
        "epochs_to_best": best_epoch,
        "seconds_per_epoch": sum(h["train_seconds"] for h in history) / max(len(history), 1),
        "train_seconds": result["train_seconds"],
        "data_seconds": result["data_seconds"],
        "full_sort_users_per_s": result["test_users"] / result["test_seconds"],
        "peak_rss_gib": peak_rss_gib(),
        "valid": {k: float(v) for k, v in result["best_valid_result"].items()},
        "test": {k: float(v) for k, v in result["test_result"].items()},
        "history": history,
    }
    write_json(out / "run.json", record)
    clear_checkpoints(out, keep_best=bool(spec.get("keep_weights")))  # results keep numbers and configs
    print(
        f"{spec['model']} seed {spec['seed']}: {record['epochs_run']} epochs (best {record['epochs_to_best']}), "
        f"valid NDCG@10 {record['valid'].get('ndcg@10', float('nan')):.4f}, test {record['test']}, "
        f"{record['train_seconds'] / 60:.1f} min training",
        flush=True,
    )
    return record


def clear_checkpoints(out: Path, keep_best: bool = False) -> None:
    """Remove a run's training states (``saved/*.state.pth``) and, unless ``keep_best``, its best model."""
    for checkpoint in (out / "saved").glob("*.pth"):
        if checkpoint.name.endswith(".state.pth") or not keep_best:
            checkpoint.unlink()


def write_json(path: Path, data: dict[str, Any]) -> None:
    partial = path.with_suffix(".partial")
    partial.write_text(json.dumps(data, indent=1))
    partial.replace(path)  # a killed run never leaves a half-written run.json behind


# -------------------------------------------------------------------------------------------- parent


FORWARDED_SIGNALS = (signal.SIGTERM, signal.SIGHUP)


def run_child(command: list[str], **popen_kwargs: Any) -> int:
    """Run one run's process and return its exit code. A SIGTERM or SIGHUP sent to the benchmark (``kill``,
    a scheduler's time limit, a closed terminal) is passed on to the run, and the benchmark stops once the run
    has, so that stopping the benchmark never leaves a training running on its own. The run's last training
    state stays for resuming."""
    child = subprocess.Popen(command, **popen_kwargs)
    received: list[int] = []

    def pass_on(signum: int, frame: Any) -> None:  # wait() below carries on until the run has stopped
        received.append(signum)
        child.send_signal(signum)

    in_main_thread = threading.current_thread() is threading.main_thread()  # only there can handlers be set
    previous = {s: signal.signal(s, pass_on) for s in FORWARDED_SIGNALS} if in_main_thread else {}
    try:
        code = child.wait()
    except BaseException:  # Ctrl-C or an error in the benchmark itself: do not leave the run behind
        child.kill()
        child.wait()
        raise
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    if received:
        name = signal.Signals(received[0]).name
        print(f"stopped by {name}, and the run with it; repeat the same command to continue it", flush=True)
        raise SystemExit(128 + received[0])
    return code


def run_all(specs: list[dict[str, Any]], results_dir: Path, rerun: bool = False) -> list[str]:
    """Run each spec in its own process unless an identical finished run exists; returns failures."""
    failures = []
    (results_dir / "logs").mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(PROJECT_ROOT), os.environ.get("PYTHONPATH")]))}
    for index, spec in enumerate(specs, 1):
        name = f"{spec['model']}-seed{spec['seed']}"
        out = results_dir / "runs" / name
        done = out / "run.json"
        if done.is_file() and not rerun and json.loads(done.read_text()).get("key") == spec["key"]:
            print(f"[{index}/{len(specs)}] {name}: finished earlier with the same settings, kept", flush=True)
            continue
        out.mkdir(parents=True, exist_ok=True)
        previous = out / "spec.json"
        continuing = False
        if rerun or not previous.is_file() or json.loads(previous.read_text()).get("key") != spec["key"]:
            clear_checkpoints(out)  # a training state left by other settings (or --rerun) must not be resumed
        elif list((out / "saved").glob("*.state.pth")):
            continuing = True
            print(f"[{index}/{len(specs)}] {name}: continuing an interrupted run from its last training state")
        previous.write_text(json.dumps(spec, indent=1))
        log = results_dir / "logs" / f"{name}.log"
        print(f"[{index}/{len(specs)}] {name}: training (log: {log})", flush=True)
        started = time.perf_counter()
        with open(log, "a" if continuing else "w") as handle:  # a continued run keeps its earlier epochs' log
            if continuing:
                stamp = time.strftime("%Y-%m-%d %H:%M:%S")
                handle.write(f"\n----- continued {stamp} from the last training state -----\n")
                handle.flush()
            code = run_child(
                [sys.executable, "-m", "acerec_recbole.benchmark", f"--run_spec={out / 'spec.json'}"],
                stdout=handle,
                stderr=subprocess.STDOUT,
                cwd=results_dir,  # RecBole's own log/ folders land beside the results, not in the caller's cwd
                env=env,
            )
        minutes = (time.perf_counter() - started) / 60
        if code != 0:
            failures.append(name)
            tail = "".join(log.read_text().splitlines(keepends=True)[-5:])
            print(f"[{index}/{len(specs)}] {name}: FAILED after {minutes:.1f} min (exit {code}); see {log}:\n{tail}")
        else:
            test = json.loads(done.read_text())["test"]
            print(f"[{index}/{len(specs)}] {name}: {minutes:.1f} min, test NDCG@10 {test['ndcg@10']:.4f}", flush=True)
    return failures


def mean_std(values: list[float]) -> tuple[float, float]:
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, float("nan")
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def summarise(
    results_dir: Path, models: list[str], title: str, current_key: Callable[[str, int], str] | None = None
) -> list[dict[str, Any]]:
    """results.csv (one row per seed, then mean and std per model), results.md and the validation plot.

    With ``current_key(model, seed)``, runs made under other settings (the yaml changed since) are left
    out of the tables, so one table never mixes two schedules; they are named with the way to refresh them.
    """
    runs = []
    for path in sorted(results_dir.glob("runs/*/run.json")):
        run_record = json.loads(path.read_text())
        spec_file = path.with_name("spec.json")
        if spec_file.is_file():  # today's form of the command (portable paths), from the run's own spec
            run_record["reproduce"] = reproduce_command(json.loads(spec_file.read_text()))
        runs.append(run_record)
    runs = [r for r in runs if r["model"] in models]
    if current_key is not None:
        stale = [r for r in runs if r["key"] != current_key(r["model"], r["seed"])]
        for r in stale:
            print(
                f"Left out of the tables: runs/{r['model']}-seed{r['seed']} ran with other settings than the "
                f"current ones (benchmark yaml, --config_files, --key=value); train it again with "
                f"--models={r['model']} --seeds={r['seed']}."
            )
        runs = [r for r in runs if r not in stale]
    runs.sort(key=lambda r: (models.index(r["model"]), r["seed"]))
    if not runs:
        print(f"No finished runs with the current settings under {results_dir}/runs yet.")
        return []
    columns = [
        "model", "seed", *(f"test_{m}" for m in METRICS), "valid_ndcg@10", "params", "hidden_size",
        "train_batch_size", "seconds_per_epoch", "epochs_run", "epochs_to_best", "train_minutes",
        "full_sort_users_per_s", "peak_rss_gib",
    ]  # fmt: skip

    def row_of(r: dict[str, Any]) -> dict[str, Any]:
        return {
            "model": r["model"],
            "seed": r["seed"],
            **{f"test_{m}": r["test"][m] for m in METRICS},
            "valid_ndcg@10": r["valid"]["ndcg@10"],
            "params": r["params"],
            "hidden_size": r["hidden_size"],
            "train_batch_size": r["train_batch_size"],
            "seconds_per_epoch": r["seconds_per_epoch"],
            "epochs_run": r["epochs_run"],
            "epochs_to_best": r["epochs_to_best"],
            "train_minutes": r["train_seconds"] / 60,
            "full_sort_users_per_s": r["full_sort_users_per_s"],
            "peak_rss_gib": r["peak_rss_gib"],
        }

    per_seed = [row_of(r) for r in runs]
    summary, aggregates = [], []
    for model in dict.fromkeys(r["model"] for r in per_seed):
        mine = [r for r in per_seed if r["model"] == model]
        numeric = [c for c in columns[2:] if all(isinstance(r[c], (int, float)) for r in mine)]
        stats = {c: mean_std([float(r[c]) for r in mine]) for c in numeric}
        summary.append({"model": model, "seeds": len(mine), **stats})
        aggregates.append({"model": model, "seed": "mean", **{c: stats[c][0] for c in numeric}})
        aggregates.append({"model": model, "seed": "std", **{c: stats[c][1] for c in numeric}})

    with open(results_dir / "results.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, columns, extrasaction="ignore")
        writer.writeheader()
        for r in per_seed + aggregates:
            writer.writerow({k: f"{v:.6g}" if isinstance(v, float) else v for k, v in r.items()})

    write_markdown(results_dir, title, summary, per_seed, runs)
    plot_validation(results_dir, runs, models)
    return summary


MARGIN_KEYS = ("test_ndcg@10", "valid_ndcg@10")  # the figures results.md compares between models


def margin_rows(summary: list[dict]) -> list[dict]:
    """The first model's lead over each other one, against twice the larger seed std (the benchmark's rule
    for "ahead": a lead that seed noise does not explain). Only models with two or more seeds on both sides."""
    if not summary or summary[0]["seeds"] < 2:
        return []
    reference, rows = summary[0], []
    for other in summary[1:]:
        if other["seeds"] < 2 or not all(k in other and k in reference for k in MARGIN_KEYS):
            continue
        row: dict[str, Any] = {"model": other["model"]}
        for key in MARGIN_KEYS:
            lead = reference[key][0] - other[key][0]
            bar = 2 * max(reference[key][1], other[key][1])
            row[key] = {"lead": lead, "bar": bar, "clears": lead > bar}
        rows.append(row)
    return rows


def write_markdown(results_dir: Path, title: str, summary: list[dict], per_seed: list[dict], runs: list[dict]):
    def pm(stat: tuple[float, float], digits: int = 4) -> str:
        mean, std = stat
        return f"{mean:.{digits}f}" if math.isnan(std) else f"{mean:.{digits}f} ± {std:.{digits}f}"

    def mean(summary_row: dict, key: str, spec: str) -> str:  # "-" where a model has no such figure (Pop: no d)
        return format(summary_row[key][0], spec) if key in summary_row else "-"

    lines = [f"# {title}", ""]
    lines += ["Test metrics at the epoch with the best validation NDCG@10; mean ± sample std over seeds.", ""]
    lines.append(
        "| model | seeds | NDCG@10 | Recall@10 | NDCG@5 | Recall@5 | valid NDCG@10 | params | d | batch "
        "| s/epoch | epochs run (best) | train min | full-sort users/s | peak RSS GiB |"
    )
    lines.append("|---" * 15 + "|")
    for s in summary:
        lines.append(
            f"| {s['model']} | {s['seeds']} | {pm(s['test_ndcg@10'])} | {pm(s['test_recall@10'])} "
            f"| {pm(s['test_ndcg@5'])} | {pm(s['test_recall@5'])} | {pm(s['valid_ndcg@10'])} "
            f"| {mean(s, 'params', ',.0f')} | {mean(s, 'hidden_size', '.0f')} | {mean(s, 'train_batch_size', '.0f')} "
            f"| {mean(s, 'seconds_per_epoch', '.1f')} | {mean(s, 'epochs_run', '.1f')} "
            f"({mean(s, 'epochs_to_best', '.1f')}) | {mean(s, 'train_minutes', '.1f')} "
            f"| {mean(s, 'full_sort_users_per_s', ',.0f')} | {mean(s, 'peak_rss_gib', '.2f')} |"
        )
    margins = margin_rows(summary)
    if margins:
        lines += ["", f"## Margins of {summary[0]['model']}", ""]
        lines.append(
            f"{summary[0]['model']}'s mean minus each other model's, beside twice the larger of the two seed "
            "standard deviations; `yes` where the lead is larger than that."
        )
        lead_columns = " | {} NDCG@10 lead | 2 × larger std | clears"
        lines += ["", "| over" + lead_columns.format("test") + lead_columns.format("valid") + " |"]
        lines.append("|---" * 7 + "|")
        for m in margins:
            cells = [
                f"{m[key]['lead']:+.4f} | {m[key]['bar']:.4f} | {'yes' if m[key]['clears'] else 'no'}"
                for key in MARGIN_KEYS
            ]
            lines.append(f"| {m['model']} | " + " | ".join(cells) + " |")
    lines += ["", "## Per seed", ""]
    lines.append("| model | seed | NDCG@10 | Recall@10 | NDCG@5 | Recall@5 | valid NDCG@10 | epochs (best) |")
    lines.append("|---" * 8 + "|")
    for r in per_seed:
        lines.append(
            f"| {r['model']} | {r['seed']} | {r['test_ndcg@10']:.4f} | {r['test_recall@10']:.4f} "
            f"| {r['test_ndcg@5']:.4f} | {r['test_recall@5']:.4f} | {r['valid_ndcg@10']:.4f} "
            f"| {r['epochs_run']} ({r['epochs_to_best']}) |"
        )
    lines += ["", "## Reproduce one row", ""]
    lines += [f"- {r['model']} seed {r['seed']}: `{r['reproduce']}`" for r in runs]
    lines += ["", "Full resolved configs: `runs/<model>-seed<seed>/config.yaml`; training logs: `logs/`.", ""]
    (results_dir / "results.md").write_text("\n".join(lines))


def plot_validation(results_dir: Path, runs: list[dict[str, Any]], models: list[str]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(7, 4.5))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for run in runs:
        points = [(h["epoch"], h["ndcg@10"]) for h in run["history"] if "ndcg@10" in h]
        if not points:
            continue
        colour = colours[models.index(run["model"]) % len(colours)]
        first = run is next(r for r in runs if r["model"] == run["model"])
        axis.plot(*zip(*points), marker="o", markersize=3, color=colour, label=run["model"] if first else None)
    axis.set_xlabel("epoch")
    axis.set_ylabel("validation NDCG@10")
    axis.set_title(f"{runs[0]['dataset']}: validation NDCG@10 per epoch (one line per seed)")
    axis.grid(alpha=0.3)
    axis.legend()
    figure.tight_layout()
    figure.savefig(results_dir / "valid_ndcg10.png", dpi=120)
    plt.close(figure)


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    parser = argparse.ArgumentParser(
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Any other --key=value is a RecBole setting applied to every run on top of the plan, e.g. "
        "--data_path=DIR (where DIR/<dataset>/<dataset>.inter lives), --epochs=5, --hidden_size=128.",
    )
    parser.add_argument("--dataset", default=None, help="dataset name; its plan is properties/benchmark/<dataset>.yaml")
    parser.add_argument("--models", default=None, help="comma-separated; default: the benchmark yaml's list")
    parser.add_argument("--seeds", default=None, help="comma-separated; default: the benchmark yaml's list")
    parser.add_argument("--profile", default="cpu", help="profile in the benchmark yaml (cpu | paper)")
    parser.add_argument("--plan", default=None, help="benchmark yaml (default properties/benchmark/<dataset>.yaml)")
    parser.add_argument("--config_files", default=None, help="space-separated yaml files applied to every model")
    parser.add_argument("--results_dir", default=None, help="default results/<profile>/<dataset>")
    parser.add_argument("--rerun", action="store_true", help="train again even if an identical run finished")
    parser.add_argument("--summarise_only", action="store_true", help="rebuild the tables and plot, train nothing")
    parser.add_argument(
        "--keep_weights", action="store_true", help="keep each new run's best model in runs/<run>/saved/ (for analysis)"
    )
    parser.add_argument("--run_spec", default=None, help=argparse.SUPPRESS)  # internal: one run in this process
    args, overrides = parser.parse_known_args(argv)

    if args.run_spec:
        run_one(Path(args.run_spec).resolve())
        return []
    if not args.dataset:
        parser.error("--dataset is required (e.g. --dataset=amazon2014-beauty)")
    plan = load_plan(args.dataset, args.profile, args.plan)
    models = args.models.split(",") if args.models else list(plan["models"])
    seeds = [int(s) for s in args.seeds.split(",")] if args.seeds else [int(s) for s in plan["seeds"]]
    results_dir = Path(args.results_dir or PROJECT_ROOT / "results" / args.profile / args.dataset).resolve()
    config_files = args.config_files.split() if args.config_files else []
    specs = [run_spec(plan, m, args.dataset, s, config_files, overrides) for s in seeds for m in models]
    for spec in specs:  # how a run is kept, not what it is: outside its key
        spec["keep_weights"] = args.keep_weights
    print(f"benchmark: {args.dataset}, profile {args.profile} ({plan['file']}), models {models}, seeds {seeds}")
    print(f"results: {results_dir}", flush=True)
    failures = [] if args.summarise_only else run_all(specs, results_dir, args.rerun)
    # the tables cover the yaml's models too, so running one model (--models=X) does not drop the others
    tabled = list(plan["models"]) + [m for m in models if m not in plan["models"]]
    summary = summarise(
        results_dir,
        tabled,
        f"{args.dataset}: {args.profile} profile",
        current_key=lambda model, seed: run_spec(plan, model, args.dataset, seed, config_files, overrides)["key"],
    )
    if failures:
        print(f"Failed runs (see their logs): {failures}")
        raise SystemExit(1)
    return summary


if __name__ == "__main__":
    with usage_errors_exit("benchmark", debug="--debug" in sys.argv):
        main([a for a in sys.argv[1:] if a != "--debug"])
