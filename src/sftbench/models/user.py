"""Models of user catalogs: any causal LM transformers builds natively, from a local config.json.

A case's process builds such a model from its spec alone (CaseSpec.user_model): the config file is read, its
`model_type` gives transformers' config class and AutoModelForCausalLM's class for it, and the model is built
like the zoo's, with random weights (sftbench.models.registry.empty_model). The LoRA targets swift's DEFAULT
and ALL stand for, and the parameter count, come from the model built on the meta device.
"""

from __future__ import annotations

import copy
import dataclasses
import json
from functools import cache, partial

from torch import nn
from transformers import CONFIG_MAPPING, PreTrainedConfig
from transformers import __version__ as transformers_version
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING

from sftbench.spec import CaseSpec, UserModel

from .registry import LLAMA_LORA_DEFAULT, ModelEntry, empty_model, get_model


class UnusableConfig(ValueError):
    """A config.json that transformers cannot build a causal LM from: one line saying why."""


def model_of(spec: CaseSpec) -> ModelEntry:
    """The spec's model: one of the zoo's, or of a user catalog."""
    if spec.user_model is None:
        return get_model(spec.model_type)
    return user_model_entry(spec.model_type, spec.user_model)


def model_of_case(case: dict) -> ModelEntry:
    """The model of a stored result's case (Result.case: CaseSpec.to_dict(), user_model as a dict or absent)."""
    user = case.get("user_model")
    if user is None:
        return get_model(case["model_type"])
    lists = (tuple(user[key]) if user.get(key) else None for key in ("lora_default", "lora_all"))
    return user_model_entry(case["model_type"], UserModel(user["config"], *lists))


@cache
def user_model_entry(name: str, model: UserModel) -> ModelEntry:
    """The ModelEntry of a user catalog's model `name`; UnusableConfig where its config cannot make one."""
    data = read_config(model.config)
    config_class = CONFIG_MAPPING[data["model_type"]]
    make_config = partial(_config, config_class, data)  # a fresh config each time: builds change theirs
    config = make_config()
    model_class = MODEL_FOR_CAUSAL_LM_MAPPING.get(type(config), None)
    if model_class is None:
        raise UnusableConfig(f"model_type {data['model_type']!r} has no causal-LM class in transformers "
                             f"{transformers_version} (AutoModelForCausalLM)")
    # Its LoRA targets and size are found on the model built on the meta device from this first entry.
    entry = ModelEntry(name, config.model_type, make_config, model_class, (), (), None, model.config)
    try:
        meta = empty_model(entry, "meta")
    except Exception as error:  # noqa: BLE001 - whatever the model's constructor refuses, in one line
        raise UnusableConfig(f"transformers cannot build {model_class.__name__} from it: {_one_line(error)}") from None
    linears = _linear_names(meta)
    modules = {module_name.rsplit(".", 1)[-1] for module_name, _ in meta.named_modules()}
    for key, targets in (("lora_default", model.lora_default), ("lora_all", model.lora_all)):
        absent = [target for target in targets or () if target not in modules]
        if absent:
            raise UnusableConfig(f"{key}: {model_class.__name__} has no module {absent[0]!r}")
    lora_default = model.lora_default or tuple(target for target in LLAMA_LORA_DEFAULT if target in linears)
    if not lora_default:
        raise UnusableConfig(f"{model_class.__name__} has no {', '.join(LLAMA_LORA_DEFAULT)} Linear layers for "
                             "swift's DEFAULT LoRA targets: give lora_default")
    return dataclasses.replace(entry, lora_default=lora_default, lora_all=model.lora_all or linears,
                               total_params=sum(p.numel() for p in meta.parameters()))


def read_config(path: str) -> dict:
    """The config.json at `path` as a dict whose model_type transformers knows; UnusableConfig otherwise."""
    try:
        with open(path, encoding="utf-8") as file:
            data = json.load(file)
    except OSError as error:
        raise UnusableConfig(f"cannot read it: {error.strerror}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise UnusableConfig(f"not JSON: {error}") from None
    if not isinstance(data, dict):
        raise UnusableConfig("not a JSON object")
    model_type = data.get("model_type")
    if not isinstance(model_type, str) or model_type not in CONFIG_MAPPING:  # a remote-code model's type, a typo, or one newer than this transformers
        raise UnusableConfig(f"transformers {transformers_version} knows no model_type {model_type!r}")
    try:
        _config(CONFIG_MAPPING[model_type], data)
    except Exception as error:  # noqa: BLE001 - a field of the wrong type, whichever the config class checks
        raise UnusableConfig(f"transformers cannot make a {model_type} config of it: {_one_line(error)}") from None
    return data


def _config(config_class: type[PreTrainedConfig], data: dict) -> PreTrainedConfig:
    return config_class.from_dict(copy.deepcopy(data))


def _linear_names(model: nn.Module) -> tuple[str, ...]:
    """The names (last part, as peft matches them) of every Linear but the output head."""
    head = model.get_output_embeddings()
    return tuple(sorted({name.rsplit(".", 1)[-1] for name, module in model.named_modules()
                         if isinstance(module, nn.Linear) and module is not head}))


def _one_line(error: Exception) -> str:
    return " ".join(str(error).split())
