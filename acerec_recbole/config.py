"""RecBole Config that knows this package's models and ``properties/`` yaml files.

Priority, lowest to highest (RecBole's own order, with our defaults slotted in above RecBole's):
RecBole's internal defaults < ``properties/overall.yaml`` < ``properties/model/<Model>.yaml`` <
``properties/dataset/<dataset>.yaml`` < ``config_file_list`` < ``config_dict`` < command line.
"""

from __future__ import annotations

import os
from logging import getLogger
from pathlib import Path
from typing import Any

from recbole.config import Config as RecBoleConfig
from recbole.utils import get_model as get_recbole_model

from acerec_recbole.model import MODELS

PROPERTIES_DIR = Path(__file__).resolve().parent.parent / "properties"


def get_model_class(name: str) -> type:
    """Resolve a model name: this package first, RecBole's zoo second."""
    if name in MODELS:
        return MODELS[name]
    try:
        return get_recbole_model(name)
    except (ValueError, ImportError) as err:
        # RecBole's look-up ends in its exlib package, whose import needs lightgbm/xgboost: an unknown
        # name then surfaces as an ImportError of an unrelated library.
        known = ", ".join(sorted(MODELS))
        raise ValueError(
            f"Unknown model '{name}': not one of this package's models ({known}) nor in RecBole's zoo "
            f"({type(err).__name__}: {err}). Check the spelling (names are case-sensitive, e.g. SASRec)."
        ) from err


def parse_cmd_args(args: list[str]) -> tuple[dict[str, str], list[str]]:
    """Split ``--key=value`` arguments (RecBole's syntax) from anything else."""
    parsed: dict[str, str] = {}
    unrecognised: list[str] = []
    for arg in args:
        if not arg.startswith("--") or "=" not in arg:
            unrecognised.append(arg)
            continue
        key, value = arg[2:].split("=", 1)
        if key in parsed and parsed[key] != value:
            raise ValueError(f"Command-line argument --{key} is given twice with different values.")
        parsed[key] = value
    return parsed, unrecognised


class Config(RecBoleConfig):
    """RecBole's Config, plus our model registry, our yaml defaults and an explicit command line.

    ``cmd_args`` replaces RecBole's implicit read of ``sys.argv`` so that library calls and tests never
    pick up a foreign command line; ``run_recbole.py`` passes ``sys.argv[1:]``.
    """

    def __init__(
        self,
        model: str | type | None = None,
        dataset: str | None = None,
        config_file_list: list[str] | None = None,
        config_dict: dict[str, Any] | None = None,
        cmd_args: list[str] | None = None,
    ) -> None:
        for file in config_file_list or []:
            if not os.path.isfile(file):
                raise FileNotFoundError(f"Config file '{file}' (from --config_files) does not exist.")
        self._cmd_args = list(cmd_args or [])
        super().__init__(model, dataset, config_file_list, config_dict)

    def _load_cmd_line(self) -> dict[str, Any]:
        parsed, unrecognised = parse_cmd_args(self._cmd_args)
        if unrecognised:
            getLogger().warning(f"command line args [{' '.join(unrecognised)}] will not be used in RecBole")
        return self._convert_config_dict(parsed)

    def _set_default_parameters(self) -> None:
        super()._set_default_parameters()
        # RecBole always points ml-100k at its bundled copy, even when data_path is given; honour an
        # explicit data_path that holds an ml-100k folder (e.g. a filtered copy), else keep the bundle.
        explicit = self.external_config_dict.get("data_path")
        if self.dataset == "ml-100k" and explicit and os.path.isdir(os.path.join(explicit, self.dataset)):
            self.final_config_dict["data_path"] = os.path.join(explicit, self.dataset)

    def _get_model_and_dataset(self, model: Any, dataset: Any) -> tuple[str, type, str]:
        if model is None:
            model = self.external_config_dict.get("model")
            if model is None:
                raise KeyError("No model given: pass --model=<Name> (e.g. ACERec, RPG, SASRec).")
        if isinstance(model, str):
            model_name, model_class = model, get_model_class(model)
        else:
            model_name, model_class = model.__name__, model
        if dataset is None:
            dataset = self.external_config_dict.get("dataset")
            if dataset is None:
                raise KeyError("No dataset given: pass --dataset=<name> (e.g. ml-100k).")
        return model_name, model_class, dataset

    def _load_internal_config_dict(self, model: str, model_class: type, dataset: str) -> None:
        super()._load_internal_config_dict(model, model_class, dataset)
        dataset_file = PROPERTIES_DIR / "dataset" / f"{dataset}.yaml"
        for file in (PROPERTIES_DIR / "overall.yaml", PROPERTIES_DIR / "model" / f"{model}.yaml", dataset_file):
            if file.is_file():
                loaded = self._update_internal_config_dict(str(file)) or {}
                if file == dataset_file:
                    self.parameters["Dataset"] += [k for k in loaded if k not in self.parameters["Dataset"]]
