"""Shared pieces of the converters: RecBole atomic-file writing and input errors that name file and line."""

from __future__ import annotations

import gzip
import os
import shutil
import tempfile
import zipfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO, Any


class DatasetFormatError(ValueError):
    """Raw input that cannot be converted; the message names the file and line."""

    def __init__(self, path: str | Path, line: int | None, problem: str) -> None:
        where = f"{path}:{line}" if line is not None else str(path)
        super().__init__(f"{where}: {problem}")


def require_file(path: Path, what: str) -> Path:
    if not path.is_file():
        raise FileNotFoundError(f"{what} not found: {path}")
    return path


def open_binary(path: Path) -> IO[bytes]:
    """Open a plain or .gz file for reading bytes."""
    return gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")


def numbered_lines(handle: IO[bytes], path: Path | str, encoding: str = "utf-8") -> Iterator[tuple[int, str]]:
    """(line number, text) for non-blank lines, decoded line by line so errors name the right line."""
    number = 0
    try:
        for number, raw in enumerate(handle, start=1):  # noqa: B007 - number is read in except
            try:
                line = raw.decode(encoding).rstrip("\r\n")
            except UnicodeDecodeError as err:
                raise DatasetFormatError(path, number, f"cannot decode as {encoding} ({err.reason})") from err
            if line.strip():
                yield number, line
    except (EOFError, OSError, zipfile.BadZipFile) as err:
        raise DatasetFormatError(path, number + 1, f"cannot read ({err})") from err


def clean_text(value: Any) -> str:
    """One line of text, safe inside a tab-separated token_seq cell."""
    if value is None:
        return ""
    if isinstance(value, (list, tuple)):
        value = " ".join(clean_text(v) for v in value)
    return " ".join(str(value).replace("\t", " ").split())


class AtomicWriter:
    """Writes ``<output>/<name>/<name>.{inter,item,user}`` all-or-nothing.

    Files go to a temporary folder first and replace the destination only when every file is complete,
    so a failed conversion never leaves a partial dataset behind.
    """

    def __init__(self, output_dir: str | Path, name: str) -> None:
        self.target = Path(output_dir) / name
        self.name = name
        self.target.parent.mkdir(parents=True, exist_ok=True)
        self.staging = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=self.target.parent))

    def write(self, suffix: str, header: Sequence[str], rows: Iterator[Sequence[Any]] | list) -> int:
        count = 0
        with open(self.staging / f"{self.name}.{suffix}", "w", encoding="utf-8", newline="\n") as handle:
            handle.write("\t".join(header) + "\n")
            for row in rows:
                handle.write("\t".join("" if v is None else str(v) for v in row) + "\n")
                count += 1
        return count

    def commit(self) -> Path:
        if self.target.exists():
            backup = self.target.with_name(self.target.name + ".old")
            shutil.rmtree(backup, ignore_errors=True)
            os.replace(self.target, backup)
            os.replace(self.staging, self.target)
            shutil.rmtree(backup, ignore_errors=True)
        else:
            os.replace(self.staging, self.target)
        return self.target

    def abort(self) -> None:
        shutil.rmtree(self.staging, ignore_errors=True)

    def __enter__(self) -> AtomicWriter:
        return self

    def __exit__(self, exc_type: Any, *_: Any) -> None:
        if exc_type is None:
            self.commit()
        else:
            self.abort()
