r"""Accuracy by how often the target item occurs in training: where a validation-to-test drop comes from.

    python -m acerec_recbole.target_popularity --checkpoint=saved/SASRec-<date>.pth \
        --checkpoint=saved/ACERec-<date>.pth [--edges=1,5,10,20,50] [--data_path=../shared/data]

Leave-one-out test targets can be rarer items than validation targets, and models that lean on
popularity lose more on them. For each checkpoint, validation and test users are grouped by their
target's training count (its occurrences in the training sequences) and NDCG@10 / Recall@10 are
computed per group. Scores, exclusions and top-k are computed as the trainer's full ranking computes
them, so the "all" row is the run's own validation and test result (a test holds the two equal).
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

import acerec_recbole  # noqa: F401  (RecBole compatibility patches and model registration)
from acerec_recbole.errors import UsageError, usage_errors_exit
from acerec_recbole.recommend import rebuild_run, training_counts

DEFAULT_EDGES = (1, 5, 10, 20, 50)


@dataclass(frozen=True)
class TargetRanks:
    """Per evaluated user: the target item and its 1-based rank in the top k (0 when outside it)."""

    targets: np.ndarray
    ranks: np.ndarray


@torch.no_grad()
def rank_targets(model: Any, loader: Any, n_items: int, k: int = 10) -> TargetRanks:
    """Rank every user's target as RecBole's full-sort evaluation does (padding and history excluded)."""
    model.eval()
    device = next(model.parameters()).device
    targets, ranks = [], []
    for interaction, history_index, positive_u, positive_i in loader:
        scores = model.full_sort_predict(interaction.to(device)).view(-1, n_items)
        scores[:, 0] = -np.inf
        if history_index is not None:
            scores[history_index] = -np.inf
        top = torch.topk(scores, k, dim=-1).indices[positive_u]
        found = top == positive_i.to(top.device).unsqueeze(1)
        ranks.append(torch.where(found.any(1), found.float().argmax(1) + 1, 0).cpu().numpy())
        targets.append(positive_i.cpu().numpy())
    return TargetRanks(np.concatenate(targets), np.concatenate(ranks))


def group_labels(edges: tuple[int, ...]) -> list[str]:
    """Labels of the count groups [0, e1), [e1, e2), ..., [e_last, inf)."""
    bounds = [0, *edges]
    labels = [f"{lo}" if hi - lo == 1 else f"{lo}-{hi - 1}" for lo, hi in zip(bounds, bounds[1:])]
    return labels + [f"{bounds[-1]}+"]


def by_count_group(ranks: TargetRanks, counts: np.ndarray, edges: tuple[int, ...]) -> list[dict[str, Any]]:
    """Users, NDCG@k and Recall@k per group of the target's training count, then over all users."""
    group = np.searchsorted(np.asarray(edges), counts[ranks.targets], side="right")
    hit = ranks.ranks > 0
    gains = np.zeros(len(hit))
    gains[hit] = 1.0 / np.log2(ranks.ranks[hit] + 1.0)
    rows = []
    for index, label in [*enumerate(group_labels(edges)), (None, "all")]:
        members = np.ones_like(group, dtype=bool) if index is None else group == index
        users = int(members.sum())
        rows.append(
            {
                "group": label,
                "users": users,
                "share": users / max(len(group), 1),
                "ndcg": float(gains[members].mean()) if users else float("nan"),
                "recall": float(hit[members].mean()) if users else float("nan"),
            }
        )
    return rows


def ndcg_at_validation_mix(report: dict[str, Any]) -> float:
    """Test NDCG@10 had the test targets been spread over the count groups as the validation targets
    are: the part of the validation-to-test drop that this leaves is not the targets' popularity."""
    pairs = [(v["share"], t["ndcg"]) for v, t in zip(report["valid"][:-1], report["test"][:-1]) if v["share"]]
    if any(np.isnan(ndcg) for _, ndcg in pairs):
        return float("nan")  # a group with validation users has no test users: no such reweighting
    return float(sum(share * ndcg for share, ndcg in pairs))


def analyse(checkpoint: str | Path, edges: tuple[int, ...] = DEFAULT_EDGES, data_path: str | None = None) -> dict:
    """The checkpoint's validation and test rows by target training count."""
    if list(edges) != sorted(set(edges)) or not edges or edges[0] < 1:
        raise UsageError(f"--edges={','.join(map(str, edges))}: give increasing counts >= 1, e.g. 1,5,10,20,50.")
    config, model, data, (train, valid, test) = rebuild_run(checkpoint, data_path=data_path)
    counts = training_counts(train.dataset, data.item_num)
    return {
        "model": config["model"],
        "dataset": config["dataset"],
        "checkpoint": str(checkpoint),
        "valid": by_count_group(rank_targets(model, valid, data.item_num), counts, edges),
        "test": by_count_group(rank_targets(model, test, data.item_num), counts, edges),
    }


def markdown(report: dict[str, Any]) -> str:
    lines = [
        f"{report['model']} on {report['dataset']} ({report['checkpoint']}): NDCG@10 / Recall@10 by the target's "
        "training count",
        "",
        "| training count | valid users | valid NDCG@10 | valid Recall@10 "
        "| test users | test NDCG@10 | test Recall@10 |",
        "|---|---|---|---|---|---|---|",
    ]
    for v, t in zip(report["valid"], report["test"]):
        lines.append(
            f"| {v['group']} | {v['users']:,} ({v['share']:.1%}) | {v['ndcg']:.4f} | {v['recall']:.4f} | "
            f"{t['users']:,} ({t['share']:.1%}) | {t['ndcg']:.4f} | {t['recall']:.4f} |"
        )
    valid, test, mixed = report["valid"][-1]["ndcg"], report["test"][-1]["ndcg"], ndcg_at_validation_mix(report)
    lines += [
        "",
        f"Test NDCG@10 at the validation targets' mix of groups: {mixed:.4f}. Of the drop from validation to "
        f"test ({valid:.4f} -> {test:.4f}), {mixed - test:+.4f} comes from the test targets' other mix of "
        f"popularity and {valid - mixed:+.4f} from lower accuracy within the groups.",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", action="append", required=True, help="a run's best-model .pth; repeatable")
    parser.add_argument("--edges", default=",".join(map(str, DEFAULT_EDGES)), help="group boundaries of the count")
    parser.add_argument("--data_path", default=None, help="where the dataset folder lives, if it moved")
    parser.add_argument("--debug", action="store_true", help="show the traceback of usage errors too")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    with usage_errors_exit("target_popularity", args.debug):
        try:
            edges = tuple(int(edge) for edge in args.edges.split(","))
        except ValueError as err:
            raise UsageError(f"--edges={args.edges}: give comma-separated whole numbers, e.g. 1,5,10,20,50.") from err
        reports = []
        for checkpoint in args.checkpoint:
            reports.append(analyse(checkpoint, edges, args.data_path))
            print(markdown(reports[-1]) + "\n", flush=True)
    return reports


if __name__ == "__main__":
    main()
