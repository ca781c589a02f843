"""RecBole Config that knows this package's models and ``properties/`` yaml files.

Priority, lowest to highest (RecBole's own order, with our defaults slotted in above RecBole's):
RecBole's internal defaults < ``properties/overall.yaml`` < ``properties/model/<Model>.yaml`` <
``properties/dataset/<dataset>.yaml`` < ``config_file_list`` < ``config_dict`` < command line.
"""

from __future__ import annotations

import ast
import difflib
import os
from logging import getLogger
from pathlib import Path
from typing import Any

from recbole.config import Config as RecBoleConfig
from recbole.utils import get_model as get_recbole_model

from acerec_recbole.errors import MissingInputError, UsageError
from acerec_recbole.model import MODELS

PROPERTIES_DIR = Path(__file__).resolve().parent.parent / "properties"


def get_model_class(name: str) -> type:
    """Resolve a model name: this package first, RecBole's zoo second."""
    if name in MODELS:
        return MODELS[name]
    try:
        return get_recbole_model(name)
    except (ValueError, ImportError, AttributeError) as err:
        # RecBole's look-up ends in its exlib package, whose import needs lightgbm/xgboost: an unknown
        # name then surfaces as an ImportError of an unrelated library, so that error is not repeated.
        known = known_model_names()
        close = [k for k in known if k.lower() == name.lower()] or difflib.get_close_matches(name, known, 3, 0.6)
        hint = f"Did you mean {' or '.join(close)}? " if close else ""
        raise UsageError(
            f"Unknown model '{name}': not one of this package's models ({', '.join(sorted(MODELS))}) nor in "
            f"RecBole's zoo. {hint}Names are case-sensitive (e.g. SASRec, GRU4Rec, BERT4Rec)."
        ) from err


def known_model_names() -> list[str]:
    """This package's models and the classes exported by RecBole's model packages."""
    import importlib

    names = set(MODELS)
    for kind in ("general", "sequential", "context_aware", "knowledge_aware"):
        module = importlib.import_module(f"recbole.model.{kind}_recommender")
        names.update(n for n in dir(module) if n[:1].isupper())
    return sorted(names)


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
            raise UsageError(f"--{key} is given twice with different values ({parsed[key]!r} and {value!r}): keep one.")
        parsed[key] = value
    return parsed, unrecognised


def cmd_arg_value(text: str) -> Any:
    """The value RecBole reads from ``--key=<text>``: a Python literal, true/false, or else the string
    (as ``Config._convert_config_dict``, without evaluating arbitrary expressions)."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return {"true": True, "false": False}.get(text.lower(), text)


def check_value_types(defaults: dict[str, Any], given: dict[str, Any], how: str) -> None:
    """Numbers and switches must stay numbers and switches: ``--epochs=abc`` would otherwise fail deep
    inside training. Keys without a numeric or boolean default are left to RecBole."""
    for key, value in given.items():
        default = defaults.get(key)
        if isinstance(default, bool):
            ok, kind = isinstance(value, bool), "True or False"
        elif isinstance(default, (int, float)):
            ok, kind = isinstance(value, (int, float)) and not isinstance(value, bool), "a number"
        else:
            continue
        if not ok:
            raise UsageError(f"{how.format(key=key, value=value)}: {key} must be {kind} (its default is {default}).")


def _integer(low: int) -> tuple[Any, str]:
    return (lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= low), f"an integer >= {low}"


def _number(low: float, high: float | None = None, low_open: bool = False, high_open: bool = True) -> tuple[Any, str]:
    def ok(v: Any) -> bool:
        if not isinstance(v, (int, float)) or isinstance(v, bool):
            return False
        above = v > low if low_open else v >= low
        below = high is None or (v < high if high_open else v <= high)
        return above and below

    lower = f"> {low}" if low_open else f">= {low}"
    upper = "" if high is None else (f" and < {high}" if high_open else f" and <= {high}")
    return ok, f"a number {lower}{upper}"


def _one_of(*choices: Any) -> tuple[Any, str]:
    return (lambda v: v in choices), "one of " + ", ".join(map(str, choices))


# Settings of this package's models and semantic IDs, checked before any data is loaded. Keys that are
# absent or ~ are left to their defaults; RecBole's own keys are RecBole's business.
SETTING_RULES: dict[str, tuple[Any, str]] = {
    "hidden_size": _integer(1),
    "inner_size": _integer(1),
    "n_layers": _integer(1),
    "n_heads": _integer(1),
    "merger_heads": _integer(1),
    "num_latents": _integer(1),
    "MAX_ITEM_LIST_LENGTH": _integer(1),
    "merger": _one_of("attn", "mean", "mlp", "conv"),
    "anchor": _one_of("intent", "last"),
    "item_token_norm": _one_of(True, False),
    "attn_qk_norm": _one_of(True, False),
    "tie_output_tokens": _one_of(True, False),
    "length_bucketing": _one_of(True, False),
    "cpu_memory_reuse": _one_of(True, False),
    "hidden_dropout_prob": _number(0, 1),
    "attn_dropout_prob": _number(0, 1),
    "residual_dropout_prob": _number(0, 1),
    "isa_weight": _number(0),
    "reconstruction_weight": _number(0),
    "isa_temperature": _number(0, low_open=True),
    "mtp_temperature": _number(0, low_open=True),
    "mtp_temperature_start": _number(0, low_open=True),
    "mtp_temperature_anneal_ratio": _number(0, 1, high_open=False),
    "mtp_label_smoothing": _number(0, 1),
    "popularity_beta": _number(0),
    "position_init_std": _number(0),
    "token_init_std": _number(0, low_open=True),
    "output_token_init_std": _number(0, low_open=True),
    "warmup_ratio": _number(0, 1, high_open=False),
    "warmup_steps": _integer(1),
    "ema_decay": _number(0, 1),
    "adam_beta2": _number(0, 1),
    "sid_num_digits": _integer(1),
    "sid_codebook_size": _one_of(2, 4, 8, 16, 32, 64, 128, 256),
    "sid_opq_iters": _integer(0),
    "sid_pca_dim": _integer(1),
    "sid_encoder_batch_size": _integer(1),
    "sid_codes_to_cache": _one_of(True, False),
}


def validate_settings(config: dict[str, Any], keys: Any = None) -> None:
    """Refuse a value outside its allowed range, naming the key, the value and the range."""
    for key in keys or SETTING_RULES:
        value = config.get(key)
        if value is None:
            continue
        ok, allowed = SETTING_RULES[key]
        if not ok(value):
            raise UsageError(f"{key}={value!r} is not allowed: {key} must be {allowed}.")
    output_std = config.get("output_token_init_std")
    if output_std is not None and config.get("tie_output_tokens") is not False:
        raise UsageError(
            f"output_token_init_std={output_std!r} applies to an untied output table only: set "
            "tie_output_tokens: False, or use token_init_std for the tied table."
        )


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
                raise MissingInputError(f"Config file '{file}' (from --config_files) does not exist.")
        self._cmd_args = list(cmd_args or [])
        super().__init__(model, dataset, config_file_list, config_dict)

    def _get_final_config_dict(self) -> dict[str, Any]:
        check_value_types(self.internal_config_dict, self.cmd_config_dict, "--{key}={value}")
        check_value_types(self.internal_config_dict, self.file_config_dict, "{key}: {value} (in --config_files)")
        return super()._get_final_config_dict()

    def _load_cmd_line(self) -> dict[str, Any]:
        parsed, unrecognised = parse_cmd_args(self._cmd_args)
        if unrecognised:
            getLogger().warning(f"command line args [{' '.join(unrecognised)}] will not be used in RecBole")
        return self._convert_config_dict(parsed)

    def _set_default_parameters(self) -> None:
        super()._set_default_parameters()
        if self.model in MODELS:  # ACERec / RPG: every setting checked before any work starts
            validate_settings(self.final_config_dict)
        # RecBole always points ml-100k at its bundled copy, even when data_path is given; honour an
        # explicit data_path that holds an ml-100k folder (e.g. a filtered copy), else keep the bundle.
        explicit = self.external_config_dict.get("data_path")
        if self.dataset == "ml-100k" and explicit and os.path.isdir(os.path.join(explicit, self.dataset)):
            self.final_config_dict["data_path"] = os.path.join(explicit, self.dataset)

    def _init_device(self) -> None:
        super()._init_device()
        if self.final_config_dict["device"].type == "cpu":  # RecBole's default says use_gpu = True regardless
            self.final_config_dict["use_gpu"] = False

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
