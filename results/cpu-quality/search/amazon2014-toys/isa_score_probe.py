"""Probe: can inference alone help ACERec on rarely seen targets? Validation only.

ACERec scores items by the sum of per-digit log-probabilities (MTP). Two changes of the score, with the
trained weights unchanged:
- ``--weights``: add w times the ISA head's item-level score phi(h, s_j) = cos(h, s_j) / tau - b_j;
- ``--alphas``: subtract alpha times each code's log prior (its share among the training targets'
  codes at that digit), so that common codes weigh less (alpha = 1: a pointwise mutual information);
- ``--scales``: per-digit log-probabilities from the logits times s (s < 1 flattens each digit's
  distribution, so one badly predicted digit costs an item less);
- ``--floors``: each digit's probability mixed with a uniform one, log((1 - e) p + e / M), which bounds
  what a single digit can take from an item's score.
Every (w, alpha, s, e) combination ranks the validation users of a trained ACERec checkpoint and prints validation
NDCG@10 and Recall@10, overall and by the target's training count (acerec_recbole.target_popularity).
It reads no test figure. Run from the project root:

    OMP_NUM_THREADS=1 python results/cpu-quality/search/amazon2014-toys/isa_score_probe.py \
        --checkpoint=<ACERec best-model .pth> [--weights=0,0.25,0.5,1,2] [--alphas=0]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[4]
sys.path.insert(0, str(ROOT))

from acerec_recbole.model.layers import holistic_scores  # noqa: E402
from acerec_recbole.recommend import rebuild_run, training_counts  # noqa: E402
from acerec_recbole.target_popularity import DEFAULT_EDGES, by_count_group, rank_targets  # noqa: E402


class BlendedScores(torch.nn.Module):
    """MTP score (less alpha x the codes' log prior) plus w times the ISA score, over the whole catalogue."""

    def __init__(
        self,
        model: torch.nn.Module,
        weight: float,
        alpha: float,
        code_log_prior: torch.Tensor,
        scale: float = 1.0,
        floor: float = 0.0,
    ) -> None:
        super().__init__()
        self.model, self.weight, self.alpha, self.code_log_prior = model, weight, alpha, code_log_prior
        self.scale, self.floor = scale, floor
        with torch.no_grad():
            items = torch.arange(model.item_codes.shape[0], device=model.item_codes.device)
            self.summaries = F.normalize(model.item_summaries(items), dim=-1)

    def full_sort_predict(self, interaction):
        states = self.model.user_states(interaction)
        # log-probabilities differ from the logits by a per-digit constant: scaling either gives the same softmax
        log_probs = torch.log_softmax(self.scale * self.model.digit_log_probs(states), dim=-1)
        if self.floor:
            log_probs = torch.log((1 - self.floor) * log_probs.exp() + self.floor / log_probs.shape[-1])
        scores = holistic_scores(log_probs - self.alpha * self.code_log_prior, self.model.item_codes)
        if self.weight:
            phi = F.normalize(states, dim=-1) @ self.summaries.T / self.model.isa_temperature
            scores = scores + self.weight * (phi - self.model.popularity_bias)
        return scores


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--weights", default="0,0.25,0.5,1,2")
    parser.add_argument("--alphas", default="0")
    parser.add_argument("--scales", default="1")
    parser.add_argument("--floors", default="0")
    args = parser.parse_args()
    config, model, data, (train, valid, _) = rebuild_run(args.checkpoint)
    counts = training_counts(train.dataset, data.item_num)
    model.eval()
    codes = model.item_codes  # (n_items, m); the prior counts each code once per training occurrence of its item
    weights = torch.as_tensor(counts, dtype=torch.float64)
    prior = torch.zeros(codes.shape[1], model.codebook_size, dtype=torch.float64)
    prior.scatter_add_(1, codes.T.cpu(), weights.expand(codes.shape[1], -1))
    log_prior = ((prior + 1) / (prior + 1).sum(1, keepdim=True)).log().float()
    grid = [
        (float(a), float(w), float(s), float(e))
        for a in args.alphas.split(",")
        for w in args.weights.split(",")
        for s in args.scales.split(",")
        for e in args.floors.split(",")
    ]
    for alpha, weight, scale, floor in grid:
        scorer = BlendedScores(model, weight, alpha, log_prior, scale, floor)
        rows = by_count_group(rank_targets(scorer, valid, data.item_num), counts, DEFAULT_EDGES)
        groups = " ".join(f"{r['group']}:{r['ndcg']:.4f}" for r in rows[:-1])
        print(
            f"alpha={alpha:g} w={weight:g} s={scale:g} e={floor:g}  valid NDCG@10 {rows[-1]['ndcg']:.4f}  "
            f"Recall@10 {rows[-1]['recall']:.4f}  | {groups}",
            flush=True,
        )


if __name__ == "__main__":
    main()
