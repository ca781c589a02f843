"""Where a dataset's atomic files come from, checked before RecBole starts (which otherwise prompts,
downloads or fails deep inside with a long traceback)."""

from __future__ import annotations

import urllib.request
from pathlib import Path
from typing import Any

import yaml

from acerec_recbole.errors import MissingInputError

CONVERT_HINT = (
    "pass --data_path=DIR where DIR/{name}/{name}.inter exists, or convert raw files first "
    "(python -m dataset_prep.movielens --input=ml-1m.zip --output=dataset, or dataset_prep.amazon; README, Data)"
)


def recbole_download_url(name: str) -> str | None:
    """The URL RecBole would download ``name`` from, if it is in RecBole's catalogue."""
    import recbole

    catalogue = Path(recbole.__file__).parent / "properties" / "dataset" / "url.yaml"
    return (yaml.safe_load(catalogue.read_text()) or {}).get(name)


def check_dataset_files(config: Any, probe_timeout: float = 10.0) -> None:
    """Raise ``MissingInputError`` saying what to do when ``<data_path>/<name>.inter`` is absent and RecBole
    cannot download it (unknown name, or no network)."""
    name, folder = config["dataset"], Path(config["data_path"])
    inter = folder / f"{name}.inter"
    if inter.is_file():
        return
    if folder.is_dir():
        raise MissingInputError(
            f"Dataset folder {folder} has no {inter.name}: RecBole needs {name}.inter (and optionally {name}.item) "
            f"there; {CONVERT_HINT.format(name=name)}."
        )
    url = recbole_download_url(name)
    if url is None:
        raise MissingInputError(
            f"Dataset '{name}' is not at {folder} and is not in RecBole's catalogue of downloadable datasets: "
            f"{CONVERT_HINT.format(name=name)}."
        )
    try:
        urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=probe_timeout).close()
    except OSError as err:
        reason = getattr(err, "reason", err)
        raise MissingInputError(
            f"Dataset '{name}' is not at {folder}, and RecBole cannot download it from {url} ({reason}). "
            f"Offline: {CONVERT_HINT.format(name=name)}."
        ) from err
