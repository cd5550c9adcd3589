"""Writes the VGG golden files (`tests/golden/vgg_golden_*.npz`) from torchvision's VGG-16 / VGG-16-BN.

Development tool, run with a Python that has torch, torchvision, numpy and absl-py (never needed by jaxmia or its
tests), e.g. the reference environment of `scripts/setup_reference.sh` (`set -a; . DIR/reference.env`):

    $JAXMIA_TORCH_PYTHON scripts/make_vgg_goldens.py --recipe=../shared/fixtures/recipe.py --out=tests/golden

Each configuration in `CONFIGS` builds torchvision's `vgg16` or `vgg16_bn` with either torchvision's head or the
low-resolution MIA head (GMI / KED-MI's `VGG16`: the `features` stack as `feature`, then BatchNorm1d `bn` and
Linear `fc_layer` on the flattened map), loads weights made by the shared fixtures' `recipe.py` rules and
stores only the manifest, the seed, the input and the outputs in the fixtures' format (no weights: the full
torchvision head alone has 120M parameters), so `recipe.load_fixture` rebuilds the weights in the tests.
The low-resolution head's model is run on `(x + 1) / 2`, the [0, 1] images that code feeds it.
"""
import importlib.util
import json
import math
import os

import numpy as np
from absl import app, flags

flags.DEFINE_string("recipe", None, "Path of the shared fixtures' recipe.py.")
flags.DEFINE_string("out", None, "Folder of the golden files (tests/golden).")
flags.mark_flags_as_required(["recipe", "out"])
FLAGS = flags.FLAGS

SEED = 20261202

# name -> (torchvision builder, head, num_classes, input side, batch). Between them: both architectures, both
# heads, input sides 32 / 64 / 96 (the last pools a 3x3 map into torchvision's 7x7 grid with overlapping
# windows) and two class counts.
CONFIGS = {
    "vgg_golden_vgg16_bn_lowres64": ("vgg16_bn", "lowres", 10, 64, 3),
    "vgg_golden_vgg16_lowres32": ("vgg16", "lowres", 5, 32, 2),
    "vgg_golden_vgg16_bn_torchvision32": ("vgg16_bn", "torchvision", 5, 32, 2),
    "vgg_golden_vgg16_torchvision96": ("vgg16", "torchvision", 10, 96, 2),
}


def weight_rule(key: str, shape) -> tuple[str, dict]:
  """(rule, args) for one state-dict key: He-scaled convs and linears, BatchNorm parameters and statistics
  around their identity values (as the shared fixtures' classifiers), so activations stay O(1) to the logits."""
  name = key.rsplit(".", 1)[-1]
  if name == "num_batches_tracked":
    return "const", {"value": 0}
  if name in ("running_mean", "bias"):  # small, so that the outputs depend on the input more than on these
    return "normal", {"mean": 0.0, "std": 0.02}
  if name == "running_var" or len(shape) == 1:  # running variance, BatchNorm weight
    return "uniform", {"low": 0.5, "high": 1.5}
  fan_in = math.prod(shape[1:])
  if len(shape) == 4:
    return "normal", {"mean": 0.0, "std": math.sqrt(2.0 / fan_in)}
  # Linears: uniform (cheaper than normal to regenerate for the 120M-parameter torchvision head) with std
  # 1/sqrt(fan_in) for the last layer, sqrt(2/fan_in) before a ReLU.
  bound = math.sqrt((3.0 if key.startswith(("fc_layer.", "classifier.6.")) else 6.0) / fan_in)
  return "uniform", {"low": -bound, "high": bound}


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments {' '.join(argv[1:])!r}; only --recipe and --out.")
  import torch  # noqa: PLC0415 (only in the reference environment that runs this script)
  import torchvision  # noqa: PLC0415
  spec = importlib.util.spec_from_file_location("recipe", FLAGS.recipe)
  recipe = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(recipe)
  torch.set_num_threads(1)
  os.makedirs(FLAGS.out, exist_ok=True)

  class LowResVGG(torch.nn.Module):
    """The low-resolution MIA head on a torchvision VGG stack: features -> flatten -> bn -> fc_layer."""

    def __init__(self, features, feat_dim, num_classes):
      super().__init__()
      self.feature = features
      self.bn = torch.nn.BatchNorm1d(feat_dim)
      self.fc_layer = torch.nn.Linear(feat_dim, num_classes)

    def forward(self, x):
      feature = self.bn(self.feature(x).flatten(1))
      return self.fc_layer(feature), feature

  for name, (builder, head, num_classes, side, batch) in CONFIGS.items():
    tv = getattr(torchvision.models, builder)(weights=None, num_classes=num_classes)
    if head == "lowres":
      net = LowResVGG(tv.features, 512 * (side // 32) ** 2, num_classes)
      forward = net
    else:
      net = tv

      def forward(x, net=net):
        features = net.classifier[:5](torch.flatten(net.avgpool(net.features(x)), 1))
        return net.classifier[6](features), features
    net.eval()
    tensors = []
    for key, value in net.state_dict().items():
      rule, rule_args = weight_rule(key, tuple(value.shape))
      tensors.append({"key": key, "shape": list(value.shape), "dtype": str(value.dtype).replace("torch.", ""),
                      "rule": rule, "args": rule_args})
    manifest = {"format": recipe.FORMAT, "name": name, "builder": f"torchvision.models.{builder}",
                "kwargs": {"num_classes": num_classes},
                "spec": {"arch": builder, "head": head, "input_shape": [batch, 3, side, side],
                         "input_range": "[0, 1] = (x + 1) / 2" if head == "lowres" else "[-1, 1]"},
                "tensors": tensors}
    state = recipe.make_state(manifest, SEED)
    net.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()}, strict=True)
    # Coarse 4x4 structure plus pixel noise: i.i.d. noise alone gives nearly the same output for every image.
    coarse = recipe.make_input((batch, 3, 4, 4), SEED, "x_coarse")
    x = 0.8 * np.repeat(np.repeat(coarse, side // 4, 2), side // 4, 3) + 0.2 * recipe.make_input(
        (batch, 3, side, side), SEED, "x")
    x = x.astype(np.float32)
    with torch.no_grad():
      torch_x = torch.from_numpy((x + 1) / 2 if head == "lowres" else x)
      logits, features = (t.numpy() for t in forward(torch_x))
    meta = {"torch": torch.__version__, "torchvision": torchvision.__version__,
            "logits_std": float(logits.std()), "features_std": float(features.std()),
            "argmax": logits.argmax(-1).tolist()}
    path = os.path.join(FLAGS.out, name + ".npz")
    np.savez_compressed(path, manifest=json.dumps(manifest), seed=np.int64(SEED), meta=json.dumps(meta),
                        **{"input/x": x, "output/logits": logits, "output/features": features})
    print(f"{path}: {os.path.getsize(path) / 1024:.0f} kB, {meta}")


if __name__ == "__main__":
  app.run(main)
