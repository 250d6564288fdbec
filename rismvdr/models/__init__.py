"""Flax NNX models (models only: losses, optimisers and I/O live in `rismvdr.train`).

The names below are imported on first use (PEP 562): the configurations
(`rismvdr.models.config`) load no Flax, the networks do.
"""
from rismvdr.lazy import lazy_exports

#: Public name -> the module of `rismvdr.models` that defines it.
_SOURCES = {
    **dict.fromkeys(("Backbone", "BackboneOutput", "beam_features"), "rismvdr.models.backbone"),
    **dict.fromkeys(("BackboneConfig", "ModelConfig", "backbone_config_for", "RefinerConfig", "DeferredDef"),
                    "rismvdr.models.config"),
    **dict.fromkeys(("SpectrumRefiner", "UNet", "match_spatial"), "rismvdr.models.unet"),
}

__all__ = ["Backbone", "BackboneConfig", "ModelConfig", "BackboneOutput", "backbone_config_for", "beam_features",
           "RefinerConfig", "DeferredDef", "SpectrumRefiner", "UNet", "match_spatial"]


__getattr__, __dir__ = lazy_exports(__name__, globals(), _SOURCES)
