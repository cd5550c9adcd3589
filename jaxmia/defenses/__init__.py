"""Training-time model inversion defenses, chosen by `config.defense.name` in `jaxmia.train`.

- `'none'`: plain (label-smoothing) cross-entropy.
- `'mid'`: variational information bottleneck before the head (`mid.create_mid_classifier`).
- `'bido'`: BiDO-HSIC dependency terms on the ResNet stage outputs (`bido.bido_penalty`).
"""
from jaxmia.defenses.bido import bido_penalty, gaussian_kernel, hsic, hsic_from_kernels
from jaxmia.defenses.mid import MIDClassifier, create_mid_classifier, gaussian_kl

DEFENSES = ("none", "mid", "bido")

__all__ = ["DEFENSES", "MIDClassifier", "bido_penalty", "create_mid_classifier", "gaussian_kernel",
           "gaussian_kl", "hsic", "hsic_from_kernels"]
