"""Training-time model inversion defenses, chosen by `config.defense.name` in `jaxmia.train`.

- `'none'`: plain (label-smoothing) cross-entropy.
- `'mid'`: variational information bottleneck before the head (`mid.create_mid_classifier`).
- `'bido'`: BiDO's normalized-HSIC dependency terms on the ResNet stage outputs and pooled features
  (`bido.bido_penalty`).
- `'calor'`: CALoR's low-rank head (`calor.create_calor_classifier`), trained with cross-entropy and then
  fine-tuned with the confidence adaptation loss (`calor.confidence_adaptation_loss`).
"""
from jaxmia.defenses.bido import (bido_penalty, gaussian_kernel, linear_kernel, normalized_hsic,
                                  normalized_hsic_from_kernels)
from jaxmia.defenses.calor import (CALoRClassifier, confidence_adaptation_loss, create_calor_classifier,
                                   optimal_confidence)
from jaxmia.defenses.mid import MIDClassifier, create_mid_classifier, gaussian_kl

DEFENSES = ("none", "mid", "bido", "calor")

__all__ = ["CALoRClassifier", "DEFENSES", "MIDClassifier", "bido_penalty", "confidence_adaptation_loss",
           "create_calor_classifier", "create_mid_classifier", "gaussian_kernel", "gaussian_kl", "linear_kernel",
           "normalized_hsic", "normalized_hsic_from_kernels", "optimal_confidence"]
