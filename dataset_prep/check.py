"""Check a dataset folder before training: per atomic file, the rows read, the rows RecBole keeps, and
which settings drop the others.

    python -m dataset_prep.check DIR NAME [--key=value ...]      # e.g. ../shared/data amazon2014-beauty

The files are read the way training reads them (this package's dataset yaml, RecBole's filters, quotes as
characters), so what this reports is what a run will see. A line with the wrong number of fields stops
with file:line.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

FILTER_KEYS = ("rm_dup_inter", "val_interval", "user_inter_num_interval", "item_inter_num_interval")


def check(data_path: str | Path, name: str, overrides: list[str] | None = None) -> list[dict[str, Any]]:
    """One row per atomic file present: rows read, rows kept, and what dropped the difference."""
    from recbole.data.dataset import Dataset

    from acerec_recbole import Config
    from acerec_recbole.compat import check_atomic_file
    from acerec_recbole.errors import MissingInputError

    folder = Path(data_path) / name
    files = {suffix: folder / f"{name}.{suffix}" for suffix in ("inter", "item", "user")}
    if not files["inter"].is_file():
        raise MissingInputError(f"{files['inter']} does not exist: a dataset needs at least NAME.inter in DIR/NAME/.")
    read = {}
    for suffix, path in files.items():
        if path.is_file():
            check_atomic_file(path)
            with open(path, "rb") as handle:
                read[suffix] = sum(1 for line in handle if line.strip()) - 1

    config = Config("Pop", name, config_dict={"data_path": str(data_path), "state": "WARNING"}, cmd_args=overrides)
    dataset = Dataset(config)
    kept = {"inter": len(dataset.inter_feat)}
    for suffix, features in (("item", dataset.item_feat), ("user", dataset.user_feat)):
        if suffix in read:  # RecBole pads features with one row for the padding id 0
            kept[suffix] = len(features) - 1 if features is not None else 0
    active = {key: config[key] for key in FILTER_KEYS if config[key] not in (None, False, "[0,inf)", {})}
    rows = []
    for suffix, count in read.items():
        dropped = count - kept.get(suffix, count)
        if dropped <= 0:
            why = "-"
        elif suffix == "inter":
            why = ", ".join(f"{k}: {v}" for k, v in active.items()) or "duplicates or filters in the dataset yaml"
        else:
            why = f"{suffix} rows without any kept interaction, or duplicated ids"
        rows.append(
            {"file": files[suffix].name, "rows_read": count, "rows_kept": kept.get(suffix, count), "dropped_by": why}
        )
    return rows


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data_path", help="folder that holds NAME/NAME.inter")
    parser.add_argument("name", help="dataset name")
    args, overrides = parser.parse_known_args(sys.argv[1:] if argv is None else argv)
    from acerec_recbole.errors import usage_errors_exit

    with usage_errors_exit("dataset_prep.check"):
        rows = check(args.data_path, args.name, overrides)
    print("| file | rows read | rows kept | dropped by |")
    print("|---|---|---|---|")
    for row in rows:
        print(f"| {row['file']} | {row['rows_read']:,} | {row['rows_kept']:,} | {row['dropped_by']} |")
    return rows


if __name__ == "__main__":
    main()
