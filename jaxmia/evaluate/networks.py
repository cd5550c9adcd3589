"""The frozen networks that score an attack's images, loaded from their weights: the evaluation model (logits
and penultimate features), FaceNet (embeddings) and the FID Inception (pool3 features)."""
import dataclasses
import hashlib
import json
import pathlib
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections

from jaxmia import files, model_store
from jaxmia.convert.inception import fid_inception_from_torch
from jaxmia.data import augment
from jaxmia.models.inception import FID_RESOLUTION

NETWORK_NAMES = ("evaluation", "facenet", "fid")


def json_digest(value) -> str:
  """A 16-hex-digit SHA-256 of `value` as sorted JSON (keys the feature cache)."""
  return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:16]


@dataclasses.dataclass(frozen=True)
class FeatureNetwork:
  """A frozen network scoring images, and how images reach it.

  kind: 'classifier' (logits and penultimate features), 'features' (a jaxmia model without head: FaceNet
  embeddings or pooled features) or 'pytorch_fid' (pool3 of the FID Inception, inputs [0, 1]).
  """
  name: str
  kind: str
  module: Any
  image_size: int
  weights_id: str            # content hash of the weights (keys the feature cache)

  def outputs(self, variables, x, ppa_compat: bool) -> dict:
    """`x` `[B, image_size, image_size, 3]` in [-1, 1] -> `{'features' [B, D]}` (+ `'logits'` for classifiers)."""
    if self.kind == "classifier":
      logits, features = self.module.apply(variables, x, return_features=True)
      return {"logits": logits.astype(jnp.float32), "features": features.astype(jnp.float32)}
    if self.kind == "pytorch_fid":
      # pytorch-fid expects [0, 1]; PPA passes its [-1, 1] images unchanged.
      x = x if ppa_compat else augment.denormalize(x)
      return {"features": self.module.apply(variables, x, method="fid_features").astype(jnp.float32)}
    return {"features": self.module.apply(variables, x).astype(jnp.float32)}

  def cache_key(self, ppa_compat: bool) -> str:
    settings = {"kind": self.kind, "image_size": self.image_size, "weights": self.weights_id,
                "ppa_input": ppa_compat and self.kind == "pytorch_fid"}
    return f"{self.name}-{json_digest(settings)}"


def num_classes(net: FeatureNetwork, variables) -> int:
  """The number of outputs of `net`'s module (the classes of a classifier)."""
  x = jax.ShapeDtypeStruct((1, net.image_size, net.image_size, 3), jnp.float32)
  return jax.eval_shape(lambda v, x: net.module.apply(v, x), variables, x).shape[-1]


def load_weights(path: str, what: str, field: str, **overrides):
  """`(module, variables, weights id)` of a weights folder; `what` and the config `field` name it in errors."""
  if not pathlib.Path(path).exists():
    raise FileNotFoundError(f"{what} not found at {path!r}; set --config.{field} to a weights folder "
                            "(jaxmia.model_store: converted PyTorch weights or a jaxmia training export), or to '' "
                            "to skip the metrics that need it.")
  module, variables = model_store.load_model(path, **overrides)
  return module, variables, json_digest(model_store.read_info(path))


def load_network(name: str, section: ml_collections.ConfigDict, field: str):
  """`(FeatureNetwork, variables)` for `section.weights`, or `(None, reason)` when it is ''."""
  weights = section.weights
  if not weights:
    return None, f"no {name} network configured (config.{field}.weights is '')"
  path = pathlib.Path(weights)
  if name == "fid" and path.is_file():
    module, variables = fid_inception_from_torch(path)   # pytorch-fid's pt_inception-*.pth
    return FeatureNetwork(name, "pytorch_fid", module, FID_RESOLUTION, files.file_digest(path)), variables
  if name == "evaluation":
    module, variables, weights_id = load_weights(weights, "Evaluation model", f"{field}.weights")
    return FeatureNetwork(name, "classifier", module, int(section.image_size), weights_id), variables
  module, variables, weights_id = load_weights(weights, f"{name} network", f"{field}.weights", num_classes=None)
  return FeatureNetwork(name, "features", module, int(section.image_size), weights_id), variables
