"""Flax models: torchvision-compatible classifiers and the NVlabs StyleGAN2 generator/discriminator."""
from jaxmia.models.registry import ARCHITECTURES, create_classifier

__all__ = ["ARCHITECTURES", "create_classifier"]
