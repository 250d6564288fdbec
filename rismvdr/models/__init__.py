"""Flax NNX models (models only: losses, optimisers and I/O live in `rismvdr.train`)."""
from rismvdr.models.backbone import Backbone, BackboneConfig, BackboneOutput, backbone_config_for, beam_features
from rismvdr.models.unet import SpectrumRefiner, UNet, match_spatial

__all__ = ["Backbone", "BackboneConfig", "BackboneOutput", "backbone_config_for", "beam_features",
           "SpectrumRefiner", "UNet", "match_spatial"]
