"""The knowledge-extraction student: a classifier trained only on an attack's images, scored on real ones (ξ).

`knowledge_extraction_score` trains the student on the attack's latents, rendered at every step and
augmented, with the attacked classes as labels (remapped to 0..K-1), and returns its top-1 accuracy on the
target's real training and test images of those classes (`jaxmia.metrics.knowledge_extraction`: settings,
label remapping, accuracy).

Training uses `jaxmia.classifier`'s jitted train step (augmentation, BatchNorm updates, data sharding) with
PyTorch-style SGD: momentum, L2 weight decay added to the gradients, and a cosine learning rate that changes
once per epoch (PyTorch's `CosineAnnealingLR` stepped per epoch; PPA: 0.1 -> 1e-4 over 75 epochs).
"""
import math
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
from absl import logging
import numpy as np
import optax

from jaxmia import classifier, parallel
from jaxmia.data import augment
from jaxmia.metrics import knowledge_extraction

# `render(render_variables, latents [B, ...]) -> images [B, S, S, 3]` in [-1, 1], jit-able.
Render = Callable[[Any, jax.Array], jax.Array]


def student_optimizer(config: ml_collections.ConfigDict, steps_per_epoch: int) -> optax.GradientTransformation:
  """PyTorch `SGD(lr, momentum, weight_decay)` with a cosine learning rate that changes once per epoch."""
  schedule = classifier.epoch_cosine_schedule(config.learning_rate, config.final_learning_rate, config.num_epochs,
                                              steps_per_epoch)
  return classifier.sgd(schedule, momentum=config.momentum, weight_decay=config.weight_decay)


def create_student(config: ml_collections.ConfigDict, num_classes: int, steps_per_epoch: int, mesh):
  """A fresh student `TrainState` replicated over `mesh`: random head, backbone from `init_weights` if given."""
  module = classifier.create_model("classifier", dict(arch=config.arch, num_classes=num_classes,
                                                      **config.builder_kwargs.to_dict()), dtype=config.dtype)
  # An 'rbg' key: XLA's RngBitGenerator compiles several times faster than threefry for a whole network.
  variables = classifier.init_variables(module, jax.random.key(config.seed, impl="rbg"), config.image_size)
  if config.init_weights:
    variables = classifier.merge_pretrained(
        variables, classifier.pretrained_variables(config.init_weights, config.arch, config.builder_kwargs.to_dict()))
  return classifier.create_train_state(module, variables, student_optimizer(config, steps_per_epoch), mesh)


def train_student(latents, labels, *, render: Render, render_variables, num_classes: int,
                  config: ml_collections.ConfigDict, mesh=None, progress=None):
  """Trains a student on rendered latents; returns its `TrainState` (replicated over the mesh).

  Args:
    latents: `[N, ...]` host array, one latent per training image.
    labels: int `[N]` in `[0, num_classes)`.
    render: `render(render_variables, latents [B, ...])` -> `[B, S, S, 3]` in [-1, 1] (e.g. StyleGAN2
      synthesis, centre crop, resize to `config.image_size`); jitted here, clamped to [-1, 1] afterwards.
    config: `metrics.knowledge_extraction.student_config()` settings.
    progress: optional `progress(step)` callback.

  Each epoch visits the latents in a fresh order (`default_rng([seed, epoch])`); the last batch of an epoch is
  filled up from the start of the same order, so every step has the full batch and compiles once.
  """
  latents, labels = np.asarray(latents), np.asarray(labels, np.int32)
  if len(latents) != len(labels) or not len(latents):
    raise ValueError(f"train_student needs one label per latent and at least one latent; got {len(latents)} "
                     f"latents and {len(labels)} labels.")
  if labels.min() < 0 or labels.max() >= num_classes:
    raise ValueError(f"labels must lie in [0, {num_classes}); remap class ids with "
                     "metrics.knowledge_extraction.remap_labels().")
  mesh = mesh or parallel.make_mesh()
  batch_size = int(config.batch_size)
  parallel.check_batch_size(batch_size, mesh, "knowledge_extraction.batch_size")
  steps_per_epoch = math.ceil(len(latents) / batch_size)
  state = create_student(config, num_classes, steps_per_epoch, mesh)
  augment_kwargs = dict(size=config.image_size, crop_scale=tuple(config.crop_scale),
                        crop_ratio=tuple(config.crop_ratio), brightness=0.0, contrast=0.0, saturation=0.0, hue=0.0,
                        flip=bool(config.flip))
  train_step = classifier.jit_train_step(classifier.make_train_step(num_classes, augment_kwargs=augment_kwargs),
                                         mesh)
  repl, sharded = parallel.replicated(mesh), parallel.data_sharding(mesh)

  def to_unit_images(variables, w):
    return jnp.clip(augment.denormalize(render(variables, w).astype(jnp.float32)), 0.0, 1.0)

  render_batch = jax.jit(to_unit_images, in_shardings=(repl, sharded), out_shardings=sharded)
  render_variables = parallel.replicate(render_variables, mesh)
  key = jax.device_put(jax.random.key(config.seed), repl)
  alpha = jax.device_put(jnp.float32(0.0), repl)
  rows = parallel.process_slice(batch_size)
  step = 0
  for epoch in range(int(config.num_epochs)):
    order = np.resize(np.random.default_rng([config.seed, epoch]).permutation(len(latents)),
                      steps_per_epoch * batch_size)
    epoch_metrics = []
    for batch in order.reshape(steps_per_epoch, batch_size):
      local = batch[rows]
      w, y = parallel.shard_batch((latents[local], labels[local]), mesh)
      state, step_metrics = train_step(state, {"image": render_batch(render_variables, w), "label": y}, key, alpha)
      epoch_metrics.append(step_metrics)
      step += 1
      if progress:
        progress(step)
    means = {k: float(np.mean(v)) for k, v in jax.tree.map(lambda *x: np.stack(x),
                                                           *jax.device_get(epoch_metrics)).items()}
    logging.info("Knowledge-extraction student, epoch %d/%d: loss %.4f, accuracy on attack images %.4f.",
                 epoch + 1, config.num_epochs, means["loss"], means["accuracy"])
  return state


def student_accuracy(state, split, classes, *, eval_step, batch_size: int, mesh) -> float:
  """Top-1 accuracy of the student on `split` (a `jaxmia.data.Split` holding only images of `classes`).

  The split's labels are original class ids; the student predicts positions in the sorted `classes`.
  `eval_step`: `classifier.make_eval_step(state.apply_fn, image_size, mesh)` (build once, reuse).
  """
  if split.num_examples == 0:
    raise ValueError("student_accuracy got an empty split; the attacked classes have no real images there.")
  logits, labels = classifier.predict(eval_step, classifier.model_variables(state), split, batch_size, mesh)
  return knowledge_extraction.extraction_accuracy(logits, labels, classes)


def knowledge_extraction_score(latents, targets, *, render: Render, render_variables, train_split, test_split,
                               config: ml_collections.ConfigDict, mesh=None, progress=None) -> dict:
  """`{'xi_train', 'xi_test', 'num_classes'}`: student trained on rendered `latents`, tested on real images.

  `targets` `[N]`: the class id of each latent (any ids; remapped to 0..K-1). `train_split` / `test_split`:
  the target's real splits restricted to those K classes (labels are the original ids).
  """
  labels, classes = knowledge_extraction.remap_labels(targets)
  mesh = mesh or parallel.make_mesh()
  state = train_student(latents, labels, render=render, render_variables=render_variables,
                        num_classes=len(classes), config=config, mesh=mesh, progress=progress)
  eval_step = classifier.make_eval_step(state.apply_fn, config.image_size, mesh)
  accuracy = lambda split: student_accuracy(state, split, classes, eval_step=eval_step,
                                            batch_size=config.eval_batch_size, mesh=mesh)
  return {"xi_train": accuracy(train_split), "xi_test": accuracy(test_split), "num_classes": len(classes)}
