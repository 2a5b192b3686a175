"""Make HNDesc available to hloc (contract of hloc 1.5, cvg/Hierarchical-Localization):
hloc loads `hloc.extractors.<conf['model']['name']>` with `dynamic_load`, which takes the
single subclass of `hloc.utils.base_model.BaseModel` found in that module.

    import hndesc_loc, hndesc_loc.hloc_plugin
    hndesc_loc.hloc_plugin.register()
    hloc.extract_features.main(hndesc_loc.confs["hndesc"], images, outputs)
"""
from __future__ import annotations

import sys
import types


def _make_module(name: str, impl_cls, base_model):
    """A module `hloc.extractors.<name>` holding one BaseModel subclass wrapping ours."""

    class Wrapper(base_model):
        default_conf = {**impl_cls.default_conf}
        required_inputs = list(impl_cls.required_inputs)
        detection_noise = getattr(impl_cls, "detection_noise", 1.0)

        def _init(self, conf):
            # hloc adds the model's `name`; everything else is ours and merged strictly (typos are errors).
            self.impl = impl_cls({k: v for k, v in conf.items() if k != "name"})

        def _forward(self, data):
            return self.impl(data)

    Wrapper.__name__ = Wrapper.__qualname__ = impl_cls.__name__
    module = types.ModuleType(f"hloc.extractors.{name}")
    module.__doc__ = f"HNDesc extractor '{name}' registered by hndesc_loc.hloc_plugin."
    Wrapper.__module__ = module.__name__
    setattr(module, impl_cls.__name__, Wrapper)
    return module


def register() -> list[str]:
    """Register our extractors into `hloc.extractors`; returns the registered names.
    Raises ImportError with a clear message when hloc is not importable."""
    try:
        import hloc.extractors
        from hloc.utils.base_model import BaseModel
    except ImportError as e:
        raise ImportError("hloc is not importable: install it from its repository "
                          "(cvg/Hierarchical-Localization) to use the plugin.") from e
    from . import registry

    names = []
    for name in ("hndesc", "hndesc_joint", "hndesc_global"):  # HNDesc's own extractors, not the baselines
        cls = registry.get("model", name)
        full = f"hloc.extractors.{name}"
        module = _make_module(name, cls, BaseModel)
        sys.modules[full] = module
        setattr(hloc.extractors, name, module)
        names.append(name)
    return names
