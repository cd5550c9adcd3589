"""Writes the KED-MI discriminator golden (`tests/golden/kedmi_golden_discriminator64.npz`) from the official code.

Development tool, run with a Python that has torch, numpy and absl-py (never needed by jaxmia or its tests), e.g.
the reference environment of `scripts/setup_reference.sh`, and a checkout of SCccc21/Knowledge-Enriched-DMI whose
`discri.py` is imported at run time (never copied into the project):

    $JAXMIA_TORCH_PYTHON scripts/make_kedmi_goldens.py --kedmi_dir=PATH --recipe=../shared/fixtures/recipe.py \
        --out=tests/golden

It builds the official `MinibatchDiscriminator` (narrow: `dim=8`, 7 classes) at its 64x64 input, loads weights
made by the shared fixtures' `recipe.py` rules and stores only the manifest, the seed, the input ([0, 1], as the
official code feeds it) and the outputs (features and logits), so `recipe.load_fixture` rebuilds the weights in
the test. The minibatch tensor `T` is drawn small, so that the samples' minibatch features are not all 0.
"""
import importlib.util
import json
import math
import os
import sys
import types

import numpy as np
from absl import app, flags

flags.DEFINE_string("kedmi_dir", None, "Checkout of SCccc21/Knowledge-Enriched-DMI (its discri.py is imported).")
flags.DEFINE_string("recipe", None, "Path of the shared fixtures' recipe.py.")
flags.DEFINE_string("out", None, "Folder of the golden files (tests/golden).")
flags.mark_flags_as_required(["kedmi_dir", "recipe", "out"])
FLAGS = flags.FLAGS

SEED = 20261203
NAME, DIM, NUM_CLASSES, BATCH = "kedmi_golden_discriminator64", 8, 7, 5


def weight_rule(key: str, shape) -> tuple[str, dict]:
  """(rule, args) of one state-dict key: He-scaled convs, InstanceNorm affine around identity, a small T."""
  if key == "mbd1.T":
    return "normal", {"mean": 0.0, "std": 0.05}
  if len(shape) == 1:
    return ("uniform", {"low": 0.5, "high": 1.5}) if ".1.weight" in key else ("normal", {"mean": 0.0, "std": 0.1})
  fan_in = math.prod(shape[1:])
  return "normal", {"mean": 0.0, "std": math.sqrt(2.0 / fan_in)}


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments {' '.join(argv[1:])!r}")
  import torch  # noqa: PLC0415 (only in the reference environment that runs this script)
  spec = importlib.util.spec_from_file_location("recipe", FLAGS.recipe)
  recipe = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(recipe)
  sys.modules["utils"] = types.SimpleNamespace(LinearWeightNorm=None)  # discri.py imports it, the class needs none
  spec = importlib.util.spec_from_file_location("discri", os.path.join(FLAGS.kedmi_dir, "discri.py"))
  discri = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(discri)
  torch.set_num_threads(1)
  net = discri.MinibatchDiscriminator(in_dim=3, dim=DIM, n_classes=NUM_CLASSES).eval()
  tensors = [{"key": key, "shape": list(value.shape), "dtype": str(value.dtype).replace("torch.", ""),
              "rule": rule, "args": args}
             for key, value in net.state_dict().items() for rule, args in [weight_rule(key, tuple(value.shape))]]
  manifest = {"format": recipe.FORMAT, "name": NAME, "builder": "discri.MinibatchDiscriminator",
              "kwargs": {"dim": DIM, "n_classes": NUM_CLASSES},
              "spec": {"input_shape": [BATCH, 3, 64, 64], "input_range": "[0, 1] = (x + 1) / 2"}, "tensors": tensors}
  state = recipe.make_state(manifest, SEED)
  net.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()}, strict=True)
  coarse = recipe.make_input((BATCH, 3, 4, 4), SEED, "x_coarse")
  x = 0.8 * np.repeat(np.repeat(coarse, 16, 2), 16, 3) + 0.2 * recipe.make_input((BATCH, 3, 64, 64), SEED, "x")
  x = np.clip(x, -1, 1).astype(np.float32)
  with torch.no_grad():
    features, logits = (t.numpy() for t in net(torch.from_numpy((x + 1) / 2)))
  meta = {"torch": torch.__version__, "features_std": float(features.std()), "logits_std": float(logits.std())}
  path = os.path.join(FLAGS.out, NAME + ".npz")
  np.savez_compressed(path, manifest=json.dumps(manifest), seed=np.int64(SEED), meta=json.dumps(meta),
                      **{"input/x": x, "output/logits": logits, "output/features": features})
  print(f"{path}: {os.path.getsize(path) / 1024:.0f} kB, {meta}")


if __name__ == "__main__":
  app.run(main)
