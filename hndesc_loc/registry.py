"""The one registry of the project: models (extractors), detectors and backbones by name.

Entries are 'module:Class' strings imported on first use, so no package imports another
to register itself (no import cycles) and `import hndesc_loc` stays cheap."""
from __future__ import annotations

import importlib

ENTRIES = {
    "model": {  # conf['model']['name'] of extract_features confs
        "hndesc": "hndesc_loc.models.hndesc:HNDesc",
        "hndesc_joint": "hndesc_loc.models.hndesc:HNDescJoint",
        "hndesc_global": "hndesc_loc.models.hndesc:HNDescGlobal",
        "sift": "hndesc_loc.models.baselines:SIFTDescriptor",
        "disk": "hndesc_loc.detectors.disk:DISK",  # detects and describes
    },
    "detector": {  # conf['model']['detector']['name'] of the hndesc model
        "sift": "hndesc_loc.detectors.sift:SIFT",
        "disk": "hndesc_loc.detectors.disk:DISK",
        "superpoint": "hndesc_loc.detectors.superpoint:SuperPoint",
        "hndesc": "hndesc_loc.models.hndesc:HNDescJoint",  # HNDesc's own trained detection head
    },
    "backbone": {  # network backbones (train config 'backbone', model conf 'backbone')
        "lite": "hndesc_loc.models.lite:LiteBackbone",
        "lite_wide": "hndesc_loc.models.lite:LiteWideBackbone",
        "caps": "hndesc_loc.models.caps:CapsBackbone",
        "effnet": "hndesc_loc.models.effnet:EffNetBackbone",
        "effnet_std": "hndesc_loc.models.effnet:EffNetStdBackbone",
    },
}


def names(kind: str) -> list[str]:
    return sorted(ENTRIES[kind])


def get(kind: str, name: str):
    """The class registered as `name` of `kind` ('model', 'detector', 'backbone')."""
    if name not in ENTRIES[kind]:
        raise KeyError(f"Unknown {kind} '{name}'; choose one of {names(kind)}.")
    module, cls = ENTRIES[kind][name].split(":")
    return getattr(importlib.import_module(module), cls)
