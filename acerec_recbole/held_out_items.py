r"""Items added after training, measured: hold items out of training, add them from text, see how they rank.

    python -m acerec_recbole.held_out_items --dataset=ml-100k --model=ACERec --fraction=0.05 \
        --config_files=properties/profile/cpu-small.yaml [--topk=10] [--key=value ...]

1. A seeded ``fraction`` of the items is held out: a copy of the dataset without their interactions
   and rows of the .item file is written to ``--work_dir``; the model trains on that copy only
   (RecBole pipeline, as ``run_recbole.py``), so it has never seen these items or their ids.
2. The held-out items are added from their original .item text (``Recommender.add_items``: frozen
   encoder + the run's stored OPQ; no retraining).
3. For every interaction with a held-out item: history = the user's earlier items, candidates = all
   items the user has not interacted with yet (held-out ones included). A hit is the held-out item in
   the top ``topk``; a random ranking hits with probability topk / candidates. Also reported: hits
   when ``new_item_slots`` of the k places are kept for new items (``recommend(new_item_slots=...)``)
   against random, and the held-out item's mean rank percentile (0 = top, random 0.5).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path
from typing import Any

import pandas as pd

from acerec_recbole.config import Config, parse_cmd_args


def field_column(frame: pd.DataFrame, field: str, path: Path) -> str:
    for column in frame.columns:
        if column.split(":")[0] == field:
            return column
    raise ValueError(f"{path} has no '{field}' column (header: {list(frame.columns)}).")


def hold_out(source: Path, target: Path, name: str, item_field: str, fraction: float, seed: int) -> list[str]:
    """Copy ``source/<name>.{inter,item}`` to ``target`` without a seeded fraction of items; return them."""
    inter_path, item_path = source / f"{name}.inter", source / f"{name}.item"
    for path in (inter_path, item_path):
        if not path.is_file():
            raise FileNotFoundError(f"{path} is needed: held-out items are added back from the .item file's text.")
    inter = pd.read_csv(inter_path, sep="\t", dtype=str, keep_default_na=False)
    items = pd.read_csv(item_path, sep="\t", dtype=str, keep_default_na=False)
    inter_items = inter[field_column(inter, item_field, inter_path)]
    catalogue = sorted(set(inter_items), key=lambda token: (len(token), token))
    held = sorted(random.Random(seed).sample(catalogue, max(1, round(fraction * len(catalogue)))))
    target.mkdir(parents=True, exist_ok=True)
    inter[~inter_items.isin(held)].to_csv(target / f"{name}.inter", sep="\t", index=False)
    item_ids = items[field_column(items, item_field, item_path)]
    items[~item_ids.isin(held)].to_csv(target / f"{name}.item", sep="\t", index=False)
    items[item_ids.isin(held)].to_csv(target / "held_out.item", sep="\t", index=False)
    return held


def held_out_events(inter_path: Path, user_field: str, item_field: str, time_field: str, held: set[str]):
    """(earlier items, held-out item) for each user's first interaction with a held-out item."""
    inter = pd.read_csv(inter_path, sep="\t", dtype=str, keep_default_na=False)
    user, item = field_column(inter, user_field, inter_path), field_column(inter, item_field, inter_path)
    time = field_column(inter, time_field, inter_path)
    inter = inter.assign(_t=inter[time].astype(float)).sort_values([user, "_t"], kind="stable")
    events = []
    for _, group in inter.groupby(user, sort=False):
        sequence = group[item].tolist()
        # first interactions only: a repeat is excluded from the candidates as already seen
        events += [(sequence[:t], x) for t, x in enumerate(sequence) if x in held and t > 0 and x not in sequence[:t]]
    return events


def evaluate(
    model: str,
    dataset: str,
    work_dir: Path,
    fraction: float = 0.05,
    topk: int = 10,
    seed: int = 2026,
    max_events: int = 2000,
    new_item_slots: int = 1,
    config_files: list[str] | None = None,
    config_dict: dict[str, Any] | None = None,
    cmd_args: list[str] | None = None,
) -> dict[str, Any]:
    from acerec_recbole.quick_start import run
    from acerec_recbole.recommend import Recommender, read_new_items

    config = Config(model, dataset, config_files, config_dict, cmd_args)
    source = Path(config["data_path"])
    item_field, user_field, time_field = config["ITEM_ID_FIELD"], config["USER_ID_FIELD"], config["TIME_FIELD"]
    work_dir = Path(work_dir).resolve()
    held = hold_out(source, work_dir / dataset, dataset, item_field, fraction, seed)

    overrides = {**(config_dict or {}), "data_path": str(work_dir), "checkpoint_dir": str(work_dir / "saved")}
    trained = run(model, dataset, config_files, overrides, [a for a in cmd_args or [] if "data_path" not in a])
    recommender = Recommender.from_checkpoint(trained["model_file"])
    known_before = len(recommender.item_tokens) - 1
    fields = recommender.config["sid_text_fields"] or []
    recommender.add_items(read_new_items(work_dir / dataset / "held_out.item", item_field, fields))

    events = held_out_events(source / f"{dataset}.inter", user_field, item_field, time_field, set(held))
    if len(events) > max_events:
        events = random.Random(seed).sample(events, max_events)
    hits, random_hits, slot_hits, random_slot_hits, percentiles = 0, 0.0, 0, 0.0, []
    for history, item in events:
        recommendations = recommender.recommend(history=history, topk=len(recommender.item_tokens))
        ranking = [r.item for r in recommendations]
        new_ranking = [r.item for r in recommendations if r.new]
        hits += item in ranking[:topk]
        random_hits += min(1.0, topk / max(len(ranking), 1))
        slot_hits += item in new_ranking[:new_item_slots]  # the list recommend(new_item_slots=...) returns
        random_slot_hits += min(1.0, new_item_slots / max(len(new_ranking), 1))
        percentiles.append(ranking.index(item) / max(len(ranking) - 1, 1))
    report = {
        "model": model,
        "dataset": dataset,
        "held_out_items": len(held),
        "catalogue_items_trained": known_before,
        "events": len(events),
        f"hit_rate@{topk}": hits / max(len(events), 1),
        f"random_hit_rate@{topk}": random_hits / max(len(events), 1),
        "test_ndcg@10_on_trained_items": trained["test_result"].get("ndcg@10"),
    }
    report["lift_over_random"] = report[f"hit_rate@{topk}"] / max(report[f"random_hit_rate@{topk}"], 1e-12)
    report[f"hit_rate@{topk}_with_{new_item_slots}_new_item_slots"] = slot_hits / max(len(events), 1)
    report[f"random_hit_rate@{topk}_with_{new_item_slots}_new_item_slots"] = random_slot_hits / max(len(events), 1)
    report["mean_rank_percentile"] = float(sum(percentiles) / max(len(percentiles), 1))  # 0 = top, random 0.5
    return report


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="ACERec")
    parser.add_argument("--dataset", default="ml-100k")
    parser.add_argument("--fraction", type=float, default=0.05)
    parser.add_argument("--topk", type=int, default=10)
    parser.add_argument("--max_events", type=int, default=2000)
    parser.add_argument("--new_item_slots", type=int, default=1)
    parser.add_argument("--work_dir", default="held_out_work", help="the reduced dataset copy and its checkpoint")
    parser.add_argument("--config_files", default=None)
    args, rest = parser.parse_known_args(sys.argv[1:] if argv is None else argv)
    parse_cmd_args(rest)  # fail early on a malformed override
    files = args.config_files.split() if args.config_files else None
    report = evaluate(
        args.model, args.dataset, Path(args.work_dir), args.fraction, args.topk, max_events=args.max_events,
        new_item_slots=args.new_item_slots, config_files=files, cmd_args=rest,
    )  # fmt: skip
    print(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
