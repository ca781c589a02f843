"""Build (or check the cache of) a dataset's semantic IDs ahead of training, and print the report::

    python -m acerec_recbole.semantic_ids --dataset=amazon2014-beauty --data_path=../shared/data \
        [--model=ACERec] [--config_files="a.yaml b.yaml"] [--sid_num_digits=32 ...]

The settings are resolved exactly as for training (properties/, --config_files, --key=value), so
the codes built here are the ones a run with the same flags reuses. A command-line entry point above
the library: ``semantic_ids`` itself never imports the config or the models.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from acerec_recbole.errors import usage_errors_exit


def main(argv: list[str] | None = None) -> dict[str, Any]:
    from recbole.data import create_dataset
    from recbole.utils import init_logger, init_seed

    from acerec_recbole.config import Config

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", required=True, help="dataset name (folder under --data_path)")
    parser.add_argument("--model", default="ACERec", help="whose settings to resolve (ACERec or RPG)")
    parser.add_argument("--config_files", default=None, help="space-separated yaml files, applied in order")
    parser.add_argument("--debug", action="store_true", help="show the traceback of usage errors too")
    args, overrides = parser.parse_known_args(sys.argv[1:] if argv is None else argv)
    files = args.config_files.split() if args.config_files else None
    with usage_errors_exit("semantic_ids", args.debug):
        config = Config(model=args.model, dataset=args.dataset, config_file_list=files, cmd_args=overrides)
        init_seed(config["seed"], config["reproducibility"])
        init_logger(config)
        dataset = create_dataset(config)
        dataset.build()
    report = dataset.semantic_id_report
    print(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
