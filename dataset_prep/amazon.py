"""Amazon Reviews (McAuley lab) -> RecBole atomic files, keeping item text.

2014 (5-core):  reviews_<Category>_5.json.gz (JSON lines) + meta_<Category>.json.gz (Python-literal lines)
2023:           <Category>.jsonl.gz + meta_<Category>.jsonl.gz (JSON lines; items keyed by parent_asin)

    python -m dataset_prep.amazon --version=2014 --input=raw/ --category=Beauty --output=dataset
    python -m dataset_prep.amazon --version=2023 --reviews=All_Beauty.jsonl.gz --meta=meta_All_Beauty.jsonl.gz

Item text fields: title, brand (2023: store), categories, description, price where present. Items that
are reviewed but have no metadata keep empty text. k-core filtering is left to RecBole
(``user_inter_num_interval`` / ``item_inter_num_interval``).
"""

from __future__ import annotations

import argparse
import ast
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dataset_prep.atomic import AtomicWriter, DatasetFormatError, clean_text, numbered_lines, open_binary, require_file

INTER_HEADER = ["user_id:token", "item_id:token", "rating:float", "timestamp:float"]
ITEM_HEADER = [
    "item_id:token",
    "title:token_seq",
    "brand:token_seq",
    "categories:token_seq",
    "description:token_seq",
    "price:float",
]


@dataclass(frozen=True)
class _Layout:
    """Where one release keeps each piece of information."""

    reviews_name: str
    meta_name: str
    user: str
    item: str
    rating: str
    time: str
    meta_item: str
    brand: str
    literal_meta: bool  # 2014 metadata lines are Python literals, not JSON


LAYOUTS = {
    "2014": _Layout(
        "reviews_{c}_5.json.gz",
        "meta_{c}.json.gz",
        "reviewerID",
        "asin",
        "overall",
        "unixReviewTime",
        "asin",
        "brand",
        True,
    ),
    "2023": _Layout(
        "{c}.jsonl.gz",
        "meta_{c}.jsonl.gz",
        "user_id",
        "parent_asin",
        "rating",
        "timestamp",
        "parent_asin",
        "store",
        False,
    ),
}


def _parse(line: str, path: Path, number: int, literal: bool) -> dict[str, Any]:
    try:
        record = json.loads(line)
    except json.JSONDecodeError:
        if not literal:
            raise DatasetFormatError(path, number, "not a JSON object") from None
        try:
            record = ast.literal_eval(line)
        except (ValueError, SyntaxError) as err:
            raise DatasetFormatError(path, number, f"not a JSON or Python-literal object ({err})") from err
    if not isinstance(record, dict):
        raise DatasetFormatError(path, number, "expected one object per line")
    return record


def _require(record: dict[str, Any], keys: tuple[str, ...], path: Path, number: int) -> list[Any]:
    missing = [k for k in keys if record.get(k) in (None, "")]
    if missing:
        raise DatasetFormatError(path, number, f"missing field(s) {missing}; present: {sorted(record)}")
    return [record[k] for k in keys]


def _categories(value: Any) -> str:
    """2014: list of category paths; 2023: one flat list. Flattened, de-duplicated, ' | '-joined."""
    flat: list[str] = []
    for entry in value or []:
        for name in entry if isinstance(entry, list) else [entry]:
            name = clean_text(name)
            if name and name not in flat:
                flat.append(name)
    return " | ".join(flat)


def _price(value: Any) -> str:
    try:
        return f"{float(str(value).replace('$', '').replace(',', '')):g}"
    except (TypeError, ValueError):
        return ""


def convert(reviews: str | Path, meta: str | Path, output_dir: str | Path, name: str, version: str = "2014") -> Path:
    """Write ``<output_dir>/<name>/<name>.{inter,item}``; returns that folder."""
    layout = LAYOUTS[version]
    reviews_path = require_file(Path(reviews), f"Amazon {version} reviews file")
    meta_path = require_file(Path(meta), f"Amazon {version} metadata file")

    interactions = []
    with open_binary(reviews_path) as handle:
        for number, line in numbered_lines(handle, reviews_path):
            record = _parse(line, reviews_path, number, literal=False)
            user, item, rating, stamp = _require(
                record, (layout.user, layout.item, layout.rating, layout.time), reviews_path, number
            )
            try:
                interactions.append((str(user), str(item), float(rating), int(stamp)))
            except (TypeError, ValueError) as err:
                raise DatasetFormatError(reviews_path, number, f"rating/timestamp not numeric ({err})") from err
    if not interactions:
        raise DatasetFormatError(reviews_path, None, "no reviews found")
    interactions.sort(key=lambda r: (r[0], r[3]))  # stable: ties keep file order
    reviewed = {item for _, item, _, _ in interactions}

    items: dict[str, tuple[str, ...]] = {}
    with open_binary(meta_path) as handle:
        for number, line in numbered_lines(handle, meta_path):
            record = _parse(line, meta_path, number, literal=layout.literal_meta)
            (item,) = _require(record, (layout.meta_item,), meta_path, number)
            if item not in reviewed:
                continue
            items[item] = (
                item,
                clean_text(record.get("title")),
                clean_text(record.get(layout.brand)),
                _categories(record.get("categories")),
                clean_text(record.get("description")),
                _price(record.get("price")),
            )

    with AtomicWriter(output_dir, name) as writer:
        writer.write("inter", INTER_HEADER, ((u, i, f"{r:g}", t) for u, i, r, t in interactions))
        writer.write("item", ITEM_HEADER, (items.get(i, (i, "", "", "", "", "")) for i in sorted(reviewed)))
    return writer.target


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", choices=sorted(LAYOUTS), default="2014")
    parser.add_argument("--input", help="folder with the raw files (use with --category)")
    parser.add_argument("--category", help="category as in the file names, e.g. Beauty or All_Beauty")
    parser.add_argument("--reviews", help="reviews file (overrides --input/--category)")
    parser.add_argument("--meta", help="metadata file (overrides --input/--category)")
    parser.add_argument("--output", default="dataset", help="data_path to write into (default: dataset)")
    parser.add_argument("--name", help="dataset name (default: amazon<version>-<category>, lower case)")
    args = parser.parse_args(argv)
    layout = LAYOUTS[args.version]
    if not (args.reviews and args.meta) and not (args.input and args.category):
        parser.error("give --input and --category, or --reviews and --meta")
    folder = Path(args.input or ".")
    reviews = args.reviews or folder / layout.reviews_name.format(c=args.category)
    meta = args.meta or folder / layout.meta_name.format(c=args.category)
    name = args.name or f"amazon{args.version}-{(args.category or Path(reviews).name.split('.')[0]).lower()}"
    print(f"wrote {convert(reviews, meta, args.output, name, args.version)}")


if __name__ == "__main__":
    main()
