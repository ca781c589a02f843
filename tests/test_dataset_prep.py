"""Converters: small files in the exact upstream formats -> atomic files that RecBole loads."""

from __future__ import annotations

import gzip
import json
import zipfile
from pathlib import Path

import pytest
from recbole.data import create_dataset

from acerec_recbole import Config
from dataset_prep import amazon, movielens
from dataset_prep.atomic import DatasetFormatError

RATINGS = [
    "1::1193::5::978300760",
    "1::661::3::978302109",
    "1::914::3::978301968",
    "2::1193::4::978298413",
    "2::661::2::978299000",
    "2::914::5::978299100",
    "3::661::4::978297000",
    "3::914::1::978297500",
    "3::1193::3::978297600",
]
MOVIES = [
    "1193::One Flew Over the Cuckoo's Nest (1975)::Drama",
    "661::James and the Giant Peach (1996)::Animation|Children's|Musical",
    "914::My Fair Lady (1964)::Musical|Romance",
]
USERS = ["1::F::1::10::48067", "2::M::56::16::70072", "3::M::25::15::55117"]


def write_movielens(folder: Path) -> Path:
    folder.mkdir(parents=True)
    for name, lines in (("ratings.dat", RATINGS), ("movies.dat", MOVIES), ("users.dat", USERS)):
        (folder / name).write_bytes(("\n".join(lines) + "\n").encode("latin-1"))
    return folder


def load_in_recbole(data_path: Path, name: str, fields: list[str], item_fields: list[str]):
    config = Config(
        "SASRec",
        name,
        config_dict={
            "data_path": str(data_path),
            "load_col": {"inter": fields, "item": item_fields},
            "state": "WARNING",
        },
    )
    return create_dataset(config)


def test_movielens_folder_and_zip_convert_and_load(tmp_path):
    raw = write_movielens(tmp_path / "raw" / "ml-1m")
    out = movielens.convert(raw, tmp_path / "out", "ml-1m")
    item_lines = (out / "ml-1m.item").read_text().splitlines()
    assert item_lines[0] == "item_id:token\tmovie_title:token_seq\trelease_year:token\tgenre:token_seq"
    assert "1193\tOne Flew Over the Cuckoo's Nest\t1975\tDrama" in item_lines
    assert "661\tJames and the Giant Peach\t1996\tAnimation Children's Musical" in item_lines
    assert len((out / "ml-1m.user").read_text().splitlines()) == 4

    archive = tmp_path / "ml-1m.zip"
    with zipfile.ZipFile(archive, "w") as handle:
        for file in raw.iterdir():
            handle.write(file, f"ml-1m/{file.name}")
    from_zip = movielens.convert(archive, tmp_path / "out-zip", "ml-1m")
    assert (from_zip / "ml-1m.inter").read_text() == (out / "ml-1m.inter").read_text()

    dataset = load_in_recbole(
        tmp_path / "out",
        "ml-1m",
        ["user_id", "item_id", "rating", "timestamp"],
        ["item_id", "movie_title", "release_year", "genre"],
    )
    assert dataset.inter_num == 9 and dataset.item_num == 4 and dataset.user_num == 4


def test_movielens_bad_line_names_file_and_line_and_writes_nothing(tmp_path):
    raw = write_movielens(tmp_path / "raw")
    (raw / "ratings.dat").write_text("\n".join(RATINGS[:3] + ["1::2::3"]) + "\n")
    with pytest.raises(DatasetFormatError, match=r"ratings.dat:4: expected 4"):
        movielens.convert(raw, tmp_path / "out", "ml-1m")
    out = tmp_path / "out"
    assert not (out / "ml-1m").exists()
    assert not out.exists() or not [p for p in out.iterdir() if p.name.startswith(".ml-1m")]  # no staging left


def test_movielens_missing_file_and_undecodable_zip_line(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        movielens.convert(tmp_path / "nowhere", tmp_path / "out")
    raw = write_movielens(tmp_path / "raw")
    (raw / "movies.dat").unlink()
    with pytest.raises(FileNotFoundError, match="movies.dat"):
        movielens.convert(raw, tmp_path / "out")


def test_a_truncated_movielens_zip_is_named_as_such(tmp_path):
    raw = write_movielens(tmp_path / "raw")
    archive = tmp_path / "ml-1m.zip"
    with zipfile.ZipFile(archive, "w") as handle:
        for name in ("ratings.dat", "movies.dat", "users.dat"):
            handle.write(raw / name, f"ml-1m/{name}")
    archive.write_bytes(archive.read_bytes()[:200])  # an interrupted download
    with pytest.raises(ValueError, match=r"ml-1m\.zip exists but is not a readable zip archive \(200 bytes\)"):
        movielens.convert(archive, tmp_path / "out")


def test_failed_conversion_keeps_the_previous_dataset(tmp_path):
    raw = write_movielens(tmp_path / "raw")
    good = movielens.convert(raw, tmp_path / "out", "ml-1m")
    before = (good / "ml-1m.inter").read_text()
    (raw / "movies.dat").write_text("1193::only two fields\n")
    with pytest.raises(DatasetFormatError, match=r"movies.dat:1"):
        movielens.convert(raw, tmp_path / "out", "ml-1m")
    assert (good / "ml-1m.inter").read_text() == before


def _gz_lines(path: Path, lines: list[str]) -> Path:
    with gzip.open(path, "wt", encoding="utf-8") as handle:
        handle.write("\n".join(lines) + "\n")
    return path


REVIEWS_2014 = [
    {
        "reviewerID": f"U{u}",
        "asin": asin,
        "reviewerName": "x",
        "helpful": [0, 0],
        "reviewText": "ok",
        "overall": 4.0 + (u % 2),
        "summary": "s",
        "unixReviewTime": 1300000000 + 100 * step,
        "reviewTime": "x",
    }
    for u in range(3)
    for step, asin in enumerate(["B001", "B002", "B003"][u:] + ["B001", "B002", "B003"][:u])
]
META_2014 = [
    # Amazon 2014 metadata is one Python literal per line (single quotes), not JSON
    "{'asin': 'B001', 'title': 'Nail Polish\\tRed', 'price': 7.99, 'brand': 'OPI', "
    "'categories': [['Beauty', 'Makeup', 'Nails'], ['Beauty', 'Gifts']], 'description': 'Shiny.'}",
    "{'asin': 'B002', 'title': 'Lip Balm', 'categories': [['Beauty', 'Skin Care']], 'salesRank': {'Beauty': 5}}",
    "{'asin': 'B999', 'title': 'Never reviewed'}",
]


def test_amazon2014_reviews_and_literal_meta_convert_and_load(tmp_path):
    reviews = _gz_lines(tmp_path / "reviews_Beauty_5.json.gz", [json.dumps(r) for r in REVIEWS_2014])
    meta = _gz_lines(tmp_path / "meta_Beauty.json.gz", META_2014)
    out = amazon.convert(reviews, meta, tmp_path / "out", "amazon2014-beauty", "2014")
    items = (out / "amazon2014-beauty.item").read_text().splitlines()
    assert items[1] == "B001\tNail Polish Red\tOPI\tBeauty | Makeup | Nails | Gifts\tShiny.\t7.99"
    assert items[2].startswith("B002\tLip Balm\t\tBeauty | Skin Care")
    assert items[3] == "B003\t\t\t\t\t"  # reviewed, no metadata: empty text (semantic IDs fall back)
    assert not any(line.startswith("B999") for line in items)
    dataset = load_in_recbole(
        tmp_path / "out",
        "amazon2014-beauty",
        ["user_id", "item_id", "rating", "timestamp"],
        ["item_id", "title", "brand", "categories"],
    )
    assert dataset.inter_num == 9 and dataset.item_num == 4


def test_amazon2023_jsonl_convert_and_load(tmp_path):
    reviews = [
        {
            "rating": 5.0,
            "title": "t",
            "text": "x",
            "images": [],
            "asin": f"A{i}x",
            "parent_asin": f"P{i}",
            "user_id": f"U{u}",
            "timestamp": 1600000000000 + 1000 * i,
            "helpful_vote": 0,
            "verified_purchase": True,
        }
        for u in range(2)
        for i in range(3)
    ]
    meta = [
        {
            "main_category": "All Beauty",
            "title": f"Product {i}",
            "average_rating": 4.1,
            "rating_number": 3,
            "features": ["a"],
            "description": ["Line one.", "Line two."],
            "price": None if i else 12.5,
            "store": "Acme",
            "categories": [],
            "details": {},
            "parent_asin": f"P{i}",
        }
        for i in range(3)
    ]
    r = _gz_lines(tmp_path / "All_Beauty.jsonl.gz", [json.dumps(x) for x in reviews])
    m = _gz_lines(tmp_path / "meta_All_Beauty.jsonl.gz", [json.dumps(x) for x in meta])
    out = amazon.convert(r, m, tmp_path / "out", "amazon2023-beauty", "2023")
    items = (out / "amazon2023-beauty.item").read_text().splitlines()
    assert items[1] == "P0\tProduct 0\tAcme\t\tLine one. Line two.\t12.5"
    assert items[2].endswith("\t")  # no price
    dataset = load_in_recbole(
        tmp_path / "out",
        "amazon2023-beauty",
        ["user_id", "item_id", "rating", "timestamp"],
        ["item_id", "title", "brand"],
    )
    assert dataset.inter_num == 6 and dataset.item_num == 4


def test_amazon_errors_name_file_and_line(tmp_path):
    good = [json.dumps(r) for r in REVIEWS_2014]
    meta = _gz_lines(tmp_path / "meta.json.gz", META_2014)
    missing_key = _gz_lines(tmp_path / "r1.json.gz", good[:2] + [json.dumps({"reviewerID": "U9", "asin": "B1"})])
    with pytest.raises(DatasetFormatError, match=r"r1.json.gz:3: missing field\(s\) \['overall', 'unixReviewTime'\]"):
        amazon.convert(missing_key, meta, tmp_path / "out", "x", "2014")
    broken = _gz_lines(tmp_path / "r2.json.gz", good[:1] + ["{not json"])
    with pytest.raises(DatasetFormatError, match=r"r2.json.gz:2: not a JSON object"):
        amazon.convert(broken, meta, tmp_path / "out", "x", "2014")
    undecodable = tmp_path / "r3.json.gz"
    with gzip.open(undecodable, "wb") as handle:
        handle.write((good[0] + "\n").encode() + b"\xff\xfe bad bytes\n")
    with pytest.raises(DatasetFormatError, match=r"r3.json.gz:2: cannot decode"):
        amazon.convert(undecodable, meta, tmp_path / "out", "x", "2014")
    with pytest.raises(FileNotFoundError, match="metadata file not found"):
        amazon.convert(missing_key, tmp_path / "absent.json.gz", tmp_path / "out", "x", "2014")
    assert not (tmp_path / "out" / "x").exists()


def test_check_reports_rows_read_kept_and_what_dropped_them(tmp_path, capsys):
    from conftest import write_dataset

    from dataset_prep import check

    data = write_dataset(tmp_path / "data")
    load_col = "--load_col={'inter': ['user_id', 'item_id', 'timestamp'], 'item': ['item_id', 'title', 'categories']}"
    rows = check.main([str(data), "toyshop", load_col])
    inter, item = rows
    assert inter["rows_read"] == inter["rows_kept"] > 0 and inter["dropped_by"] == "-"
    assert item["rows_read"] == item["rows_kept"] == 48
    assert "| toyshop.inter |" in capsys.readouterr().out
    filtered = check.check(data, "toyshop", [load_col, "--user_inter_num_interval=[12,inf)"])
    assert filtered[0]["rows_kept"] < filtered[0]["rows_read"]
    assert filtered[0]["dropped_by"] == "user_inter_num_interval: [12,inf)"
