"""Plug & Play Attacks (Struppek et al., ICML 2022) with a StyleGAN2 prior, in three jitted stages.

1. `select_initial_latents`: score random latents with the target model, keep the best per class.
2. `optimize_latents`: optimise each latent's style vector w against an identity loss on augmented views
   (`return_telemetry=True` also returns the batch's `Telemetry`, per-step loss and confidence statistics over
   the latents `counted=` marks).
3. `select_final_latents`: keep the latents whose images stay convincing under random crops and flips.

`run_attack(config, workdir)` (CLI: `python -m jaxmia.attack`) chains them with resumable outputs.
`jaxmia.attack.brep` is BREP-MI, the label-only attack (`config.kind = 'brep'`), writing the same run layout.
`jaxmia.attack.rlb` is RLB-MI, the black-box attack by soft actor-critic agents (`config.kind = 'rlb'`), likewise.
"""
from jaxmia.attack.final_selection import FinalSelection, robustness_scores, select_final_latents, top_per_class
from jaxmia.attack.initial_selection import (InitialLatents, candidate_confidences, select_initial_latents,
                                             top_candidates_per_class)
from jaxmia.attack.optimize import latent_keys, optimize_latents
from jaxmia.attack.render import synthesize, target_view
from jaxmia.attack.run import resolve_targets, run_attack

__all__ = [
    "FinalSelection", "InitialLatents", "candidate_confidences", "latent_keys", "optimize_latents",
    "resolve_targets", "robustness_scores", "run_attack", "select_final_latents", "select_initial_latents",
    "synthesize", "target_view", "top_candidates_per_class", "top_per_class",
]
