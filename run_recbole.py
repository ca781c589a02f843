"""Train and evaluate a model: ``python run_recbole.py --model=ACERec --dataset=ml-100k [--key=value ...]``.

Same syntax as RecBole's own run_recbole.py: ``--config_files="a.yaml b.yaml"`` and any ``--key=value``
override (highest priority). With no arguments: ACERec on ml-100k (bundled with RecBole, no download).

ACERec and RPG take a profile chosen for the hardware (``--profile=auto``, the default): on a machine
without a GPU the small CPU profile ``properties/profile/cpu-small.yaml`` (d 64, 18 epochs), with a GPU
the paper's settings (``properties/model/<Model>.yaml``, d 448). ``--profile=cpu`` or ``--profile=paper``
forces one; ``--config_files`` and ``--key=value`` apply on top of either. Other models ignore it.

Several processes (RecBole's DDP flags, same meaning): ``--nproc=2`` trains with two processes on this
machine (gloo on CPU, each with its share of the cores; nccl on GPUs). Several nodes: ``--world_size``
(processes of all nodes), ``--group_offset`` (this node's first rank), ``--ip``/``--port`` (rank 0's node).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

DEFAULT_MODEL = "ACERec"
DEFAULT_DATASET = "ml-100k"
CPU_PROFILE = Path(__file__).resolve().parent / "properties" / "profile" / "cpu-small.yaml"
PROFILED_MODELS = ("ACERec", "RPG")


def choose_profile(model: str, requested: str, gpu: bool) -> tuple[list[str], str]:
    """The profile's config files (applied beneath the user's) and a line saying which and why."""
    if model not in PROFILED_MODELS:
        return [], ""
    why = ""
    if requested == "auto":
        requested, why = ("paper", "a GPU is available") if gpu else ("cpu", "no GPU found")
        why += "; "
    if requested == "cpu":
        return [str(CPU_PROFILE)], (
            f"Profile: cpu ({why}properties/profile/cpu-small.yaml: d 64, batch 64, 18 epochs). "
            "--profile=paper gives the paper's settings (d 448, meant for a GPU)."
        )
    if requested == "paper":
        return [], (
            f"Profile: paper ({why}properties/model/{model}.yaml: d 448, 2 layers). "
            "--profile=cpu gives the small CPU profile."
        )
    print(f"run_recbole.py: error: --profile={requested} is not one of auto, cpu, paper.", file=sys.stderr)
    raise SystemExit(2)


def main(argv: list[str]) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", "-m", default=DEFAULT_MODEL, help=f"model name (default {DEFAULT_MODEL})")
    parser.add_argument("--dataset", "-d", default=DEFAULT_DATASET, help=f"dataset name (default {DEFAULT_DATASET})")
    parser.add_argument("--config_files", default=None, help="space-separated yaml files, applied in order")
    parser.add_argument(
        "--profile", default="auto", help="auto (default: cpu without a GPU, paper with one) | cpu | paper"
    )
    parser.add_argument("--debug", action="store_true", help="show the traceback of usage errors too")
    parser.add_argument("--nproc", type=int, default=1, help="processes on this node (default 1; >1: DDP)")
    parser.add_argument("--world_size", type=int, default=-1, help="processes of all nodes (default: nproc)")
    parser.add_argument("--ip", default="localhost", help="address of the node that hosts rank 0 (DDP)")
    parser.add_argument("--port", type=int, default=5678, help="free TCP port on the node of rank 0 (DDP)")
    parser.add_argument("--group_offset", type=int, default=0, help="global rank of this node's first process")
    args, overrides = parser.parse_known_args(argv)

    import torch

    from acerec_recbole import run
    from acerec_recbole.errors import usage_errors_exit
    from acerec_recbole.quick_start import launch

    profile_files, profile_line = choose_profile(args.model, args.profile, torch.cuda.is_available())
    if profile_line:
        print(profile_line, flush=True)
    if not any(arg.startswith("--show_progress=") for arg in overrides):
        overrides.append(f"--show_progress={sys.stderr.isatty()}")  # progress bars on a terminal only
    user_files = args.config_files.strip().split() if args.config_files else []
    config_files = profile_files + user_files or None
    with usage_errors_exit("run_recbole.py", args.debug):
        if args.nproc == 1 and args.world_size <= 0:
            result = run(model=args.model, dataset=args.dataset, config_file_list=config_files, cmd_args=overrides)
        else:
            result = launch(
                args.model, args.dataset, config_files, cmd_args=overrides, nproc=args.nproc,
                world_size=args.world_size, ip=args.ip, port=args.port, group_offset=args.group_offset,
            )  # fmt: skip
    if result is None:  # a node without rank 0: rank 0's node reports
        return {}
    print(f"best valid: {result['best_valid_result']}")
    print(f"test result: {result['test_result']}")
    print(f"checkpoint: {result['model_file']}")
    print(f"log: {result['log_file']}")
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
