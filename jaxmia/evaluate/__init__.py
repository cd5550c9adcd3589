"""Attack evaluation: `python -m jaxmia.evaluate --config=configs/evaluate_faces.py --run_dir=runs/attack_x`.

Reads a finished attack run (`latents.npz`, `summary.json` from `jaxmia.attack`, or PPA's own
`optimized_w_selected_<run id>.pt` through `load_ppa_results`) and writes to `<run_dir>/evaluation/` (or
`--out_dir`):

  report.json   every metric (null with a reason in "unavailable" when a run cannot compute it)
  report.md     the same as a table, with settings and the image grid
  per_class.csv the per-class numbers
  nearest_neighbours.png  selected samples (top row of each class) above their nearest training images

Metrics (PPA, Struppek et al. 2022; the label-smoothing paper's Table 1):
  Acc@1 / Acc@5, mean target confidence: the evaluation model on the selected images and on all optimised ones.
  δ_face / δ_eval: squared L2 distance from each selected image to the nearest training image of its target
    class, in FaceNet embedding space / in the evaluation model's penultimate features, averaged over images.
  FID: pool3 features of the FID Inception, selected images vs the training images of the attacked classes.
  Precision, recall, density, coverage (k=3): per attacked class, averaged over classes.
  Test Acc, ECE (10 bins): the target on its test split.
  ξ_train / ξ_test: knowledge extraction score (a student trained on the selected images, `jaxmia.student`).

Images are generated from the latents batch by batch inside one jitted function (synthesis -> clamp to
[-1, 1] -> the attack's centre crop -> antialiased resize to each network's input), sharded over the
`('data',)` mesh; only features leave the devices. Training-image features are computed once per class and
network and cached as npz files under `feature_cache_dir/<network>-<hash of weights + preprocessing>/
<hash of the dataset config>/`. `ppa_compat=True` reproduces PPA's numbers: unclamped generated images,
the FID network fed images in [-1, 1] where it expects [0, 1] (so it sees [-3, 1]), and PPA's
precision / recall / density definitions (`metrics.prdc`).

Modules: `attack_run` (what is read from the run), `networks` (loading the scoring networks), `scoring` (the
jitted scoring cores), `feature_cache` (training-image features, cached), `writers` (the report files),
`evaluation` (`evaluate_attack`, the steps in order); `python -m jaxmia.evaluate` is `__main__`.
"""
from jaxmia.evaluate.attack_run import AttackRun, load_attack_run, load_ppa_results, ppa_class_order
from jaxmia.evaluate.evaluation import OUTPUT_DIR, ReportNumbers, evaluate_attack
from jaxmia.evaluate.feature_cache import class_subset, dataset_cache_key, training_features
from jaxmia.evaluate.networks import NETWORK_NAMES, FeatureNetwork, load_network
from jaxmia.evaluate.scoring import (GeneratedImages, fake_scores_fn, nearest_training_distances, real_features_fn,
                                     score_generated_images)
from jaxmia.evaluate.writers import nearest_neighbour_grid

__all__ = [
    "NETWORK_NAMES", "OUTPUT_DIR", "AttackRun", "FeatureNetwork", "GeneratedImages", "ReportNumbers",
    "class_subset", "dataset_cache_key", "evaluate_attack", "fake_scores_fn", "load_attack_run", "load_network",
    "load_ppa_results", "nearest_neighbour_grid", "nearest_training_distances", "ppa_class_order",
    "real_features_fn", "score_generated_images", "training_features",
]
