"""Base class of every model: a `default_conf` merged with the user's conf,
dicts of tensors in and out (the same contract as hloc's BaseModel)."""
from abc import ABCMeta, abstractmethod
from copy import deepcopy

from torch import nn


def merge_conf(default: dict, conf: dict, where: str = "conf") -> dict:
    """Recursively merge `conf` into a copy of `default`; unknown keys are an error.
    A sub-dict with a 'name' key is a sub-model's conf: merged shallowly, since the
    sub-model validates its own keys."""
    out = deepcopy(default)
    for key, value in (conf or {}).items():
        if key not in default:
            raise KeyError(f"Unknown key '{key}' in {where}; valid keys: {sorted(default)}")
        if isinstance(default[key], dict) and "name" in default[key] and isinstance(value, dict):
            out[key] = {**default[key], **value}
        elif isinstance(default[key], dict) and isinstance(value, dict):
            out[key] = merge_conf(default[key], value, f"{where}.{key}")
        else:
            out[key] = value
    return out


class BaseModel(nn.Module, metaclass=ABCMeta):
    default_conf: dict = {}
    required_inputs: list = []

    def __init__(self, conf: dict | None = None):
        super().__init__()
        conf = dict(conf or {})
        conf.pop("name", None)  # hloc passes the model name inside its conf
        self.conf = merge_conf({**self.default_conf}, conf, type(self).__name__)
        self._init(self.conf)

    def forward(self, data: dict) -> dict:
        for key in self.required_inputs:
            if key not in data:
                raise KeyError(f"{type(self).__name__} needs input '{key}'")
        return self._forward(data)

    @abstractmethod
    def _init(self, conf: dict): ...

    @abstractmethod
    def _forward(self, data: dict) -> dict: ...
