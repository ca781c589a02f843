r"""Training and scoring cost, measured side by side in one process (ratios are what to compare).

    python -m acerec_recbole.speed --dataset=amazon2014-beauty --data_path=../shared/data \
        --models=ACERec,RPG,SASRec --hidden_sizes=64,128 [--config_files=...] [--key=value ...]
    python -m acerec_recbole.speed --dataset=amazon2014-beauty --data_path=../shared/data \
        --profile=cpu-quality --models=ACERec,RPG,SASRec     # each model at its benchmark plan's settings
    python -m acerec_recbole.speed --catalogue_items=1000000      # exact top-k on a synthetic catalogue

For each hidden size and model: one full training epoch through RecBole's Trainer (same data), then
full-sort evaluation of the validation users through RecBole's evaluator (users/second); then the
ACERec/RPG ratios of both, per hidden size. Run it with one thread (OMP_NUM_THREADS=1) on a quiet
machine, and compare ratios from one run rather than figures from different runs.

With ``--profile``, each model takes its own settings from the benchmark yaml (as the benchmark's runs
do), and every model's epoch time is also given relative to SASRec's: the training budget of issue 12
(ACERec's and RPG's minutes within SASRec's) measured in one process, which benchmark runs on different
days of a shared machine cannot give.

With ``--train_steps=N``, each model runs N training steps instead of an epoch and reports, per step, wall
seconds, CPU seconds in user and kernel mode, minor page faults and peak memory: the figures behind
``cpu_memory_reuse`` (run it once with ``--cpu_memory_reuse=False`` and once without). Add
``--op_profile=ROWS`` to see where those steps spend their time: forward milliseconds per model part, the
backward pass, the optimiser, and the ROWS operators with the most self time (``torch.profiler``).
"""

from __future__ import annotations

import argparse
import contextlib
import resource
import sys
import time
from collections.abc import Iterator
from typing import Any

import torch

from acerec_recbole.benchmark import load_plan, peak_rss_gib, run_spec
from acerec_recbole.errors import UsageError, usage_errors_exit


def measure_model(
    model: str,
    dataset: str,
    config_files: list[str] | None,
    overrides: list[str],
    hidden_size: int | None = None,
    settings: dict[str, Any] | None = None,
    label: str | None = None,
    train_steps: int = 0,
    op_rows: int = 0,
) -> dict[str, Any]:
    """One training epoch and one full-sort validation pass, or with ``train_steps`` only that many
    training steps (``measure_steps``). ``settings`` (e.g. a benchmark plan's entry) sit beneath
    ``overrides``; ``label`` names the row (a plan's variant, e.g. ``RPG-LA``)."""
    from recbole.data import create_dataset, data_preparation
    from recbole.utils import get_trainer, init_logger, init_seed

    from acerec_recbole.config import Config
    from acerec_recbole.quick_start import apply_cpu_memory_reuse, evaluated_users

    config_dict: dict[str, Any] = {**(settings or {}), "show_progress": False}
    if hidden_size:
        config_dict["hidden_size"] = hidden_size
    config = Config(model, dataset, config_files, config_dict, overrides)
    memory_reuse = apply_cpu_memory_reuse(config)
    init_seed(config["seed"], config["reproducibility"])
    init_logger(config)
    started = time.perf_counter()
    train_data, valid_data, _ = data_preparation(config, create_dataset(config))
    data_seconds = time.perf_counter() - started
    recommender = config.model_class(config, train_data.dataset).to(config["device"])
    trainer = get_trainer(config["MODEL_TYPE"], config["model"])(config, recommender)
    if train_steps:
        return {
            "model": label or model,
            "hidden_size": config["hidden_size"],
            "batch_size": config["train_batch_size"],
            "cpu_memory_reuse": memory_reuse,
            **measure_steps(recommender, trainer.optimizer, train_data, train_steps, op_rows=op_rows),
            "peak_rss_gib": round(peak_rss_gib(), 2),
        }

    started = time.perf_counter()
    loss = trainer._train_epoch(train_data, epoch_idx=0, show_progress=False)
    epoch_seconds = time.perf_counter() - started
    started = time.perf_counter()
    result = trainer.evaluate(valid_data, load_best_model=False, show_progress=False)
    eval_seconds = time.perf_counter() - started
    users = evaluated_users(valid_data)
    return {
        "model": label or model,
        "hidden_size": config["hidden_size"],
        "params": sum(p.numel() for p in recommender.parameters()),
        "train_samples": len(train_data.dataset),
        "batch_size": config["train_batch_size"],
        "seconds_per_epoch": round(epoch_seconds, 3),
        "loss_after_epoch": round(float(loss if not isinstance(loss, tuple) else sum(loss)), 2),
        "full_sort_users_per_s": round(users / eval_seconds, 1),
        "valid_ndcg@10_after_1_epoch": result.get("ndcg@10"),
        "data_seconds": round(data_seconds, 1),
        "peak_rss_gib": round(peak_rss_gib(), 2),
    }


def measure_steps(
    model: Any, optimizer: Any, train_data: Any, steps: int, warmup: int = 3, op_rows: int = 0
) -> dict[str, Any]:
    """Per training step, after ``warmup`` steps: wall seconds, CPU seconds in user and in kernel mode, and
    minor page faults. CPU seconds and faults hardly depend on what else the machine runs, wall seconds do.
    With ``op_rows``, the timed steps also run under ``torch.profiler`` (which slows them) and the time is
    printed per model part and per operator (``print_op_profile``)."""
    batches = iter(train_data)
    model.train()

    def step() -> None:
        nonlocal batches
        try:
            batch = next(batches)
        except StopIteration:
            batches = iter(train_data)
            batch = next(batches)
        optimizer.zero_grad()
        model.calculate_loss(batch.to(model.device)).backward()
        optimizer.step()

    for _ in range(warmup):
        step()
    with op_profile(model, op_rows) as profile:
        before, started = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
        for _ in range(steps):
            step()
        wall, after = time.perf_counter() - started, resource.getrusage(resource.RUSAGE_SELF)
    if profile is not None:
        print_op_profile(profile, steps, op_rows)
    return {
        "steps": steps,
        "wall_s_per_step": round(wall / steps, 3),
        "user_s_per_step": round((after.ru_utime - before.ru_utime) / steps, 3),
        "kernel_s_per_step": round((after.ru_stime - before.ru_stime) / steps, 3),
        "minor_faults_per_step": round((after.ru_minflt - before.ru_minflt) / steps),
    }


@contextlib.contextmanager
def op_profile(model: Any, op_rows: int) -> Iterator[Any]:
    """``torch.profiler`` over the block, each direct child module's forward recorded under its own name
    (``part:<name>``), so the table says which part of the model the time goes to; nothing if op_rows is 0."""
    if not op_rows:
        yield None
        return
    open_ranges: list[Any] = []  # forward calls nest, so the range to close is always the last one opened

    def enter(name: str) -> Any:
        def hook(module: Any, inputs: Any) -> None:
            open_ranges.append(torch.profiler.record_function(f"part:{name}").__enter__())

        return hook

    def leave(module: Any, inputs: Any, output: Any) -> None:
        open_ranges.pop().__exit__(None, None, None)

    handles = []
    for name, child in model.named_children():
        handles += [child.register_forward_pre_hook(enter(name)), child.register_forward_hook(leave)]
    try:
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profile:
            yield profile
    finally:
        for handle in handles:
            handle.remove()


def print_op_profile(profile: Any, steps: int, rows: int) -> None:
    """Milliseconds per training step, each inclusive of what it calls: the forward pass of each model part,
    the backward pass (autograd's per-node functions) and the optimiser; then the ``rows`` operators with the
    most self time, with their share of all self time (the part ranges' own Python time included)."""
    events = profile.key_averages()
    per_step = {e.key: e.cpu_time_total / 1000 / steps for e in events}
    total = sum(e.self_cpu_time_total for e in events) / 1000 / steps
    parts = sorted(((k, v) for k, v in per_step.items() if k.startswith("part:")), key=lambda kv: -kv[1])
    # autograd runs one evaluate_function range per graph node, none nested in another: their inclusive sum
    backward = sum(v for k, v in per_step.items() if k.startswith("autograd::engine::evaluate_function"))
    optimiser = sum(v for k, v in per_step.items() if k.startswith("Optimizer.step"))
    table = [{"part": f"forward: {k[len('part:') :]}", "ms per step": round(v, 2)} for k, v in parts]
    table += [
        {"part": "backward", "ms per step": round(backward, 2)},
        {"part": "optimiser step", "ms per step": round(optimiser, 2)},
        {"part": "everything (self time of all ranges)", "ms per step": round(total, 2)},
    ]
    print_table(table)
    print()
    top = sorted((e for e in events if not e.key.startswith("part:")), key=lambda e: -e.self_cpu_time_total)[:rows]
    print_table(
        [
            {
                "operator": e.key,
                "calls per step": round(e.count / steps, 1),
                "self ms per step": round(e.self_cpu_time_total / 1000 / steps, 2),
                "share": f"{e.self_cpu_time_total / 1000 / steps / total:.1%}",
            }
            for e in top
        ]
    )
    print()


def measure_catalogue(n_items: int, num_digits: int, codebook_size: int, batch: int, k: int = 10) -> dict[str, Any]:
    """Exact top-k over a synthetic catalogue with ``holistic_topk``: time per user and peak memory."""
    from acerec_recbole.model.layers import holistic_topk

    codes = torch.randint(0, codebook_size, (n_items, num_digits), dtype=torch.uint8)
    log_probs = torch.log_softmax(torch.randn(batch, num_digits, codebook_size), dim=-1)
    before = peak_rss_gib()
    started = time.perf_counter()
    top = holistic_topk(log_probs, codes, k)
    seconds = time.perf_counter() - started
    return {
        "items": n_items,
        "digits": num_digits,
        "batch_users": batch,
        "seconds": round(seconds, 2),
        "ms_per_user": round(1000 * seconds / batch, 2),
        "peak_rss_gib_before": round(before, 2),
        "peak_rss_gib_after": round(peak_rss_gib(), 2),
        "full_score_matrix_gib": round(batch * n_items * 4 / 2**30, 2),
        "naive_batch_x_items_x_m_gib": round(batch * n_items * num_digits * 4 / 2**30, 1),
        "top1_item_of_user0": int(top[1][0, 0]),
    }


def ratio_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """ACERec / RPG per hidden size: training seconds per epoch and full-sort users/s."""
    ratios = []
    for d in dict.fromkeys(r["hidden_size"] for r in rows):
        pair = {r["model"]: r for r in rows if r["hidden_size"] == d}
        if "ACERec" in pair and "RPG" in pair:
            ace, rpg = pair["ACERec"], pair["RPG"]
            ratios.append(
                {
                    "hidden_size": d,
                    **{
                        f"ACERec/RPG {key}": round(ace[key] / rpg[key], 2)
                        for key in ("seconds_per_epoch", "full_sort_users_per_s")
                    },
                }
            )
    return ratios


def relative_to(rows: list[dict[str, Any]], reference: str) -> list[dict[str, Any]]:
    """Each model's training seconds per epoch as a multiple of ``reference``'s, measured in this run."""
    base = next((r for r in rows if r["model"] == reference), None)
    if base is None:
        return []
    column = f"seconds_per_epoch / {reference}'s"
    return [{"model": r["model"], column: round(r["seconds_per_epoch"] / base["seconds_per_epoch"], 3)} for r in rows]


def print_table(rows: list[dict[str, Any]]) -> None:
    keys = list(rows[0])
    print("| " + " | ".join(keys) + " |")
    print("|" + "---|" * len(keys))
    for row in rows:
        print("| " + " | ".join(str(row[k]) for k in keys) + " |")


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="ml-100k")
    parser.add_argument("--models", default="ACERec,RPG,SASRec")
    parser.add_argument("--config_files", default=None)
    parser.add_argument("--hidden_sizes", default=None, help="comma-separated, e.g. 64,128 (default: the config's)")
    parser.add_argument("--profile", default=None, help="each model at this benchmark yaml profile's settings")
    parser.add_argument("--plan", default=None, help="with --profile: benchmark yaml (default: the dataset's)")
    parser.add_argument("--catalogue_items", type=int, default=0, help="score a synthetic catalogue instead")
    parser.add_argument("--digits", type=int, default=32)
    parser.add_argument("--eval_batch", type=int, default=256)
    parser.add_argument("--train_steps", type=int, default=0, help="time this many training steps, not an epoch")
    parser.add_argument(
        "--op_profile", type=int, default=0, metavar="ROWS",
        help="with --train_steps: profile those steps, print time per model part and the ROWS costliest operators",
    )  # fmt: skip
    args, overrides = parser.parse_known_args(argv)
    if args.op_profile and not args.train_steps:
        raise UsageError("--op_profile profiles training steps: give --train_steps=N too (e.g. --train_steps=50).")
    print(f"torch threads: {torch.get_num_threads()}")
    files = args.config_files.split() if args.config_files else []
    ratios: list[dict[str, Any]] = []
    if args.catalogue_items:
        rows = [measure_catalogue(args.catalogue_items, args.digits, 256, args.eval_batch)]
    elif args.profile:
        if args.hidden_sizes:
            raise UsageError("--hidden_sizes and --profile both set the hidden size: drop one (or --hidden_size=D).")
        plan = load_plan(args.dataset, args.profile, args.plan)
        rows = []
        for model in args.models.split(","):
            spec = run_spec(plan, model, args.dataset, int(plan["seeds"][0]), files, overrides)
            rows.append(
                measure_model(
                    spec.get("model_class", model), args.dataset, spec["config_files"] or None, spec["cmd_args"],
                    settings=spec["config_dict"], label=model, train_steps=args.train_steps,
                    op_rows=args.op_profile,
                )
            )  # fmt: skip
        ratios = [] if args.train_steps else relative_to(rows, "SASRec")
    else:
        sizes = [int(d) for d in args.hidden_sizes.split(",")] if args.hidden_sizes else [None]
        models = args.models.split(",")
        rows = [
            measure_model(
                m, args.dataset, files or None, overrides, d, train_steps=args.train_steps, op_rows=args.op_profile
            )
            for d in sizes
            for m in models
        ]
        ratios = [] if args.train_steps else ratio_rows(rows)
    print_table(rows)
    if ratios:
        print()
        print_table(ratios)
    return rows + ratios


if __name__ == "__main__":
    with usage_errors_exit("speed", debug="--debug" in sys.argv):
        main([a for a in sys.argv[1:] if a != "--debug"])
