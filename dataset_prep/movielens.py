"""MovieLens-1M (GroupLens ``ratings.dat``, ``movies.dat``, ``users.dat`` or ``ml-1m.zip``) -> RecBole atomic files.

    python -m dataset_prep.movielens --input=path/to/ml-1m[.zip] --output=dataset [--name=ml-1m]

Item text: title (without the year), release year, genres.
"""

from __future__ import annotations

import argparse
import re
import zipfile
from collections.abc import Iterator
from pathlib import Path

from dataset_prep.atomic import AtomicWriter, DatasetFormatError, clean_text, numbered_lines, require_file

TITLE_YEAR = re.compile(r"^(?P<title>.*?)\s*\((?P<year>\d{4})\)\s*$")


class _Source:
    """The three .dat files, from a folder or a zip (with or without a top-level folder)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        if path.is_file():
            if not zipfile.is_zipfile(path):
                raise ValueError(
                    f"MovieLens input {path} exists but is not a readable zip archive ({path.stat().st_size:,} "
                    "bytes): probably truncated by an interrupted download. Download ml-1m.zip again, or pass the "
                    "unpacked folder."
                )
            self.zip = zipfile.ZipFile(path)
        elif path.is_dir():
            self.zip = None
        else:
            raise FileNotFoundError(f"MovieLens input not found (a folder or ml-1m.zip): {path}")

    def lines(self, filename: str) -> Iterator[tuple[int, str]]:
        if self.zip is None:
            file = require_file(self.path / filename, f"MovieLens file {filename}")
            with open(file, "rb") as handle:
                yield from numbered_lines(handle, file, "latin-1")
            return
        members = [n for n in self.zip.namelist() if n.split("/")[-1] == filename]
        if not members:
            raise FileNotFoundError(f"MovieLens file {filename} not found in {self.path}")
        with self.zip.open(members[0]) as raw:
            yield from numbered_lines(raw, f"{self.path}!{members[0]}", "latin-1")


def _fields(line: str, expected: int, where: str, number: int, columns: str) -> list[str]:
    parts = line.split("::")
    if len(parts) != expected:
        raise DatasetFormatError(where, number, f"expected {expected} '::'-separated fields ({columns}), got {line!r}")
    return parts


def convert(input_path: str | Path, output_dir: str | Path, name: str = "ml-1m") -> Path:
    """Write ``<output_dir>/<name>/<name>.{inter,item,user}``; returns that folder."""
    source = _Source(Path(input_path))
    ratings, movies, users = [], [], []
    for number, line in source.lines("ratings.dat"):
        user, item, rating, stamp = _fields(line, 4, "ratings.dat", number, "UserID::MovieID::Rating::Timestamp")
        if not (rating.strip().replace(".", "", 1).isdigit() and stamp.strip().isdigit()):
            raise DatasetFormatError("ratings.dat", number, f"rating and timestamp must be numbers, got {line!r}")
        ratings.append((user, item, rating, stamp))
    for number, line in source.lines("movies.dat"):
        item, title, genres = _fields(line, 3, "movies.dat", number, "MovieID::Title::Genres")
        match = TITLE_YEAR.match(title)
        movie_title, year = (match["title"], match["year"]) if match else (title, "")
        movies.append((item, clean_text(movie_title), year, clean_text(genres.replace("|", " "))))
    try:
        for number, line in source.lines("users.dat"):
            users.append(tuple(_fields(line, 5, "users.dat", number, "UserID::Gender::Age::Occupation::Zip-code")))
    except FileNotFoundError:
        users = []  # users.dat is optional: RecBole needs only .inter (+ .item for text)

    with AtomicWriter(output_dir, name) as writer:
        writer.write("inter", ["user_id:token", "item_id:token", "rating:float", "timestamp:float"], ratings)
        writer.write(
            "item", ["item_id:token", "movie_title:token_seq", "release_year:token", "genre:token_seq"], movies
        )
        if users:
            writer.write(
                "user",
                ["user_id:token", "age:token", "gender:token", "occupation:token", "zip_code:token"],
                [(u, age, gender, occ, zip_code) for u, gender, age, occ, zip_code in users],
            )
    return writer.target


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--input", required=True, help="folder with ratings.dat/movies.dat/users.dat, or the zip")
    parser.add_argument("--output", default="dataset", help="data_path to write into (default: dataset)")
    parser.add_argument("--name", default="ml-1m", help="dataset name (default: ml-1m)")
    args = parser.parse_args(argv)
    print(f"wrote {convert(args.input, args.output, args.name)}")


if __name__ == "__main__":
    main()
