"""Probe of ACERec's first training steps on amazon2014-toys (cpu-quality plan, seed 2020 unless ``--seed``).

Prints, every 25 optimiser steps: learning rate, MTP and ISA loss, gradient norm before clipping, the
mean cosine between the states of a batch (1.0 = every position predicts the same thing) and the
parameters with the largest gradients. Same optimiser, clipping and warm-up + cosine schedule as the
trainer. Run from the project root; extra ``--key=value`` pairs override the plan:

    OMP_NUM_THREADS=1 python results/cpu-quality/search/amazon2014-toys/early_training_probe.py \
        --hidden_size=192 --inner_size=768 --steps=300 [--token_scale=25]

Model keys (e.g. ``--n_heads=4 --attn_qk_norm=True``), ``--adam_beta2`` and gamma's annealing
(``--mtp_temperature_start``) apply as in a run.
``--token_warmup_ratio=R`` gives the token tables (input and, untied, output) their own warm-up over R of
all steps, the other parameters keep ``warmup_ratio``.
``--skip_spike_factor=F`` skips the update of any step whose gradient norm before clipping exceeds F times the
median of the last 100 steps' (the weights and Adam's moments never see that batch).
``--token_scale`` multiplies the initial token table (ACERec's forward pass does not depend on the
tokens' scale: they are LayerNorm-ed at the input and normalised at the output; only Adam's relative
step size changes).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch
import yaml

ROOT = Path(__file__).resolve().parents[4]
sys.path.insert(0, str(ROOT))

from recbole.data import create_dataset, data_preparation  # noqa: E402
from recbole.utils import init_seed  # noqa: E402

from acerec_recbole import Config  # noqa: E402
from acerec_recbole.model.layers import intent_semantic_alignment_loss  # noqa: E402
from acerec_recbole.trainer import mtp_temperature_schedule, warmup_cosine, with_adam_beta2  # noqa: E402


def main() -> None:
    overrides = {k: yaml.safe_load(v) for k, v in (a.lstrip("-").split("=", 1) for a in sys.argv[1:])}
    steps = int(overrides.pop("steps", 300))
    token_scale = float(overrides.pop("token_scale", 1.0))
    seed = int(overrides.pop("seed", 2020))
    token_warmup_ratio = overrides.pop("token_warmup_ratio", None)  # the token tables' own, longer warm-up
    skip_factor = overrides.pop("skip_spike_factor", None)  # skip steps whose gradient norm is this x the median
    plan_file = ROOT / "properties/benchmark/amazon2014-toys.yaml"
    plan = yaml.safe_load(plan_file.read_text())["profiles"]["cpu-quality"]
    settings = {**plan["all"], **plan["ACERec"], "seed": seed, "reproducibility": True, "show_progress": False}
    settings = {"data_path": str(ROOT.parent / "shared/data"), **settings, **overrides}
    config = Config("ACERec", "amazon2014-toys", config_dict=settings)
    init_seed(seed, True)
    train = data_preparation(config, create_dataset(config))[0]
    init_seed(seed, True)
    model = config.model_class(config, train.dataset)
    with torch.no_grad():
        model.tokens.weight.mul_(token_scale)
    token_tables = [p for n, p in model.named_parameters() if n.split(".")[0] in ("tokens", "output_tokens")]
    others = [p for n, p in model.named_parameters() if n.split(".")[0] not in ("tokens", "output_tokens")]
    optimiser = with_adam_beta2(
        torch.optim.AdamW([{"params": others}, {"params": token_tables}], lr=config["learning_rate"], weight_decay=0.0),
        config,
    )
    total = config["epochs"] * len(train)
    warmup = int(total * config["warmup_ratio"])
    token_warmup = int(total * token_warmup_ratio) if token_warmup_ratio is not None else warmup
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimiser, [warmup_cosine(total, warmup), warmup_cosine(total, token_warmup)]
    )
    gamma = mtp_temperature_schedule(config, total)  # annealed as the trainer does
    print(f"d={config['hidden_size']} lr={config['learning_rate']} token_scale={token_scale} seed={seed}", end=" ")
    print(f"steps/epoch={len(train)}")
    step, started, window, recent_norms, skipped = 0, time.time(), [], [], 0
    while step < steps:
        for batch in train:
            model.train()
            if gamma is not None:
                model.mtp_temperature = gamma(step)
            states, targets = model.training_states(batch)
            mtp = model.token_loss(states, targets)
            candidates, index = torch.unique(targets, return_inverse=True)
            summaries = model.item_summaries(candidates)
            isa = intent_semantic_alignment_loss(
                states, summaries, index, model.popularity_bias[candidates], model.isa_temperature
            )
            optimiser.zero_grad()
            (mtp + model.isa_weight * isa).backward()
            norm = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            grads = {n: float(p.grad.norm()) for n, p in model.named_parameters() if p.grad is not None}
            spike = (
                skip_factor is not None
                and len(recent_norms) >= 25
                and float(norm) > float(skip_factor) * float(torch.tensor(recent_norms).median())
            )
            recent_norms = (recent_norms + [float(norm)])[-100:]
            if spike:  # neither the weights nor Adam's moments see this batch
                skipped += 1
            else:
                optimiser.step()
            schedule.step()
            step += 1
            unit = torch.nn.functional.normalize(states.detach()[:256], dim=-1)
            window.append((float(mtp), float(isa), float(norm), float((unit @ unit.T).mean())))
            if step % 25 == 0:
                mean = [sum(values) / len(values) for values in zip(*window)]
                top = sorted(grads.items(), key=lambda kv: -kv[1])[:3]
                print(
                    f"step {step} lr {schedule.get_last_lr()[0]:.5f} token-lr {schedule.get_last_lr()[1]:.5f} "
                    f"mtp {mean[0]:.3f} isa {mean[1]:.3f} "
                    f"grad-norm {mean[2]:.2f} state-cos {mean[3]:.3f} largest {[(n, round(g, 2)) for n, g in top]} "
                    f"skipped {skipped} {time.time() - started:.0f}s",
                    flush=True,
                )
                window = []
            if step >= steps:
                break


if __name__ == "__main__":
    main()
