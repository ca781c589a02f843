"""Train and evaluate a model: ``python run_recbole.py --model=ACERec --dataset=ml-100k [--key=value ...]``.

Same syntax as RecBole's own run_recbole.py: ``--config_files="a.yaml b.yaml"`` and any ``--key=value``
override (highest priority). With no arguments at all: ACERec on ml-100k (bundled with RecBole, no
download) with the small CPU profile ``properties/profile/cpu-small.yaml``; the paper profile is what
``--model=ACERec`` gives (properties/model/ACERec.yaml).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

DEFAULT_MODEL = "ACERec"
DEFAULT_DATASET = "ml-100k"
DEFAULT_PROFILE = Path(__file__).resolve().parent / "properties" / "profile" / "cpu-small.yaml"


def main(argv: list[str]) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", "-m", default=DEFAULT_MODEL, help=f"model name (default {DEFAULT_MODEL})")
    parser.add_argument("--dataset", "-d", default=DEFAULT_DATASET, help=f"dataset name (default {DEFAULT_DATASET})")
    parser.add_argument("--config_files", default=None, help="space-separated yaml files, applied in order")
    args, overrides = parser.parse_known_args(argv)

    from acerec_recbole import run

    config_files = args.config_files.strip().split() if args.config_files else None
    if not argv:
        config_files = [str(DEFAULT_PROFILE)]
    result = run(model=args.model, dataset=args.dataset, config_file_list=config_files, cmd_args=overrides)
    print(f"best valid: {result['best_valid_result']}")
    print(f"test result: {result['test_result']}")
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
