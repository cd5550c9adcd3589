"""Attack evaluation: the full report on a tiny attack run (real StyleGAN2 generator and classifiers at a tiny
size, random weights, the embedded digits), checked against direct computations; nearest-training-image
distances against brute force; the knowledge-extraction student on a separable problem."""
import csv
import json
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image
from tensorboard.backend.event_processing import event_accumulator

from conftest import REPO, TINY_GENERATOR_KWARGS, save_random_classifier, save_tiny_generator, with_overrides
from jaxmia import classifier, data, evaluate, export, model_store, parallel, report, student
from jaxmia.attack import render
from jaxmia.config import load_file
from jaxmia.data import augment, image_ops, pipeline
from jaxmia.evaluate import writers as evaluate_writers
from jaxmia.metrics import knowledge_extraction

SIZE = 16                                    # input size of the tiny networks
EVAL_SIZE = 32                               # the tiny DenseNet's input (16 pixels would pool to nothing)
CLASSES = np.array([3, 7, 1])                # attacked classes, deliberately unsorted
PER_CLASS, SELECTED_PER_CLASS = 7, 5


def _save_classifier(path, seed, size=SIZE, **module_kwargs):
  save_random_classifier(path, seed, size, **module_kwargs)


@pytest.fixture(scope="module")
def attack_run(tmp_path_factory):
  """A finished-looking attack run: tiny weights folders, latents.npz and summary.json in the attack's format."""
  root = tmp_path_factory.mktemp("attack")
  generator, generator_variables = save_tiny_generator(root / "generator")
  _save_classifier(root / "target", 1, arch="resnet18", num_classes=10, base_channels=4)
  # The evaluation model has another architecture than the target, as in the digits config.
  _save_classifier(root / "evaluation_model", 2, EVAL_SIZE, arch="densenet121", num_classes=10, growth_rate=4,
                   block_config=(1, 1, 1, 1), num_init_features=8, bn_size=2)
  _save_classifier(root / "features", 3, arch="resnet18", num_classes=None, base_channels=4)

  targets = np.repeat(CLASSES, PER_CLASS).astype(np.int32)
  z = jax.random.normal(jax.random.key(4), (len(targets), 8))
  mapping = jax.jit(lambda v, z: generator.apply(v, z, None, truncation_psi=0.7, method="mapping"))
  w = np.asarray(mapping(generator_variables, z))[:, :1]
  scores = np.asarray(jax.random.uniform(jax.random.key(5), (len(targets),)))
  selected = np.concatenate([np.flatnonzero(targets == c)[::-1][:SELECTED_PER_CLASS] for c in CLASSES])
  # Stage 1's latents differ from the optimised ones (reversed rows), so Acc@1 before stage 2 is its own number.
  np.savez(root / "latents.npz", targets=targets, initial_w=w[::-1], initial_indices=np.arange(len(targets)),
           initial_scores=scores, optimized_w=w, final_scores=scores, selected_indices=selected,
           selected_w=w[selected], selected_targets=targets[selected], selected_scores=scores[selected])
  attack_config = load_file(REPO / "configs" / "attack_facescrub_ffhq.py").get_config("smoke")
  attack_config.generator, attack_config.target = str(root / "generator"), str(root / "target")
  attack_config.attack.resize = SIZE
  (root / "summary.json").write_text(json.dumps({"config": json.loads(attack_config.to_json_best_effort())}))
  return root


def evaluation_config(root, **overrides):
  config = load_file(REPO / "configs" / "evaluate_digits.py").get_config("smoke")
  config.dataset.samples_per_class = 16
  config.evaluation_model.weights, config.evaluation_model.image_size = str(root / "evaluation_model"), EVAL_SIZE
  config.fid.weights, config.fid.image_size = str(root / "features"), SIZE
  config.feature_cache_dir = str(root / "cache")
  config.knowledge_extraction.image_size = SIZE
  config.grid.image_size = SIZE
  config.grid.samples_per_class = 4
  return with_overrides(config, **overrides)


@pytest.fixture(scope="module")
def evaluated(attack_run):
  config = evaluation_config(attack_run)
  return config, evaluate.evaluate_attack(config, attack_run)


IN_UNIT_RANGE = ("test_accuracy", "ece", "acc_top1", "acc_top5", "xi_train", "xi_test", "precision", "recall",
                 "coverage")


@pytest.mark.slow  # shares the ~1 min end-to-end evaluation
def test_report_has_every_column_finite_and_in_range_or_na_with_reason(attack_run, evaluated):
  _, result = evaluated
  written = json.loads((attack_run / "evaluation" / "report.json").read_text())
  assert written["metrics"] == result["metrics"]
  assert set(written["metrics"]) == set(report.COLUMN_KEYS)
  # The digits config has no FaceNet: δ_face, and only δ_face, is n/a, with the reason.
  assert written["metrics"]["delta_face"] is None
  assert set(written["unavailable"]) == {"delta_face"} and "facenet" in written["unavailable"]["delta_face"]
  for key, value in written["metrics"].items():
    if key != "delta_face":
      assert value is not None and math.isfinite(value), (key, written["unavailable"].get(key))
      assert (0.0 <= value <= 1.0) if key in IN_UNIT_RANGE else value >= 0.0, (key, value)
  assert written["details"]["num_selected"] == SELECTED_PER_CLASS * len(CLASSES)

  markdown = (attack_run / "evaluation" / "report.md").read_text()
  assert all(c.header in markdown for c in report.COLUMNS) and "nearest_neighbours.png" in markdown
  assert "| n/a |" in markdown and "no facenet network configured" in markdown
  with open(attack_run / "evaluation" / "per_class.csv") as f:
    rows = list(csv.DictReader(f))
  assert [int(r["class"]) for r in rows] == sorted(CLASSES)
  assert all(int(r["num_selected"]) == SELECTED_PER_CLASS and int(r["num_training_images"]) == 16 for r in rows)
  # The run's δ_eval is the mean of the per-class means (equal class sizes).
  np.testing.assert_allclose(np.mean([float(r["delta_eval"]) for r in rows]), result["metrics"]["delta_eval"],
                             rtol=1e-5)
  grid = Image.open(attack_run / "evaluation" / "nearest_neighbours.png")
  assert grid.size == (4 * SIZE, len(CLASSES) * (2 * SIZE + 4) - 4)
  # TensorBoard: every finite column and detail of report.json, as float32, at step 0.
  accumulator = event_accumulator.EventAccumulator(str(attack_run / "evaluation"))
  accumulator.Reload()
  shown = {tag: [(e.step, e.value) for e in accumulator.Scalars(tag)] for tag in accumulator.Tags()["scalars"]}
  expected = {f"evaluation/{k}": [(0, np.float32(v))] for k, v in written["metrics"].items() if v is not None}
  assert {tag: points for tag, points in shown.items() if tag.startswith("evaluation/")} == expected
  assert shown["evaluation_details/num_selected"] == [(0, SELECTED_PER_CLASS * len(CLASSES))]


def test_tensorboard_scalars_keep_the_finite_numbers():
  result = {"metrics": {"acc_top1": 0.5, "fid": None, "ece": float("nan")},
            "details": {"num_selected": 6, "note": "text", "flag": True, "acc_top1_initial": 0.25}}
  assert evaluate_writers.tensorboard_scalars(result) == {
      "evaluation/acc_top1": 0.5, "evaluation_details/num_selected": 6.0,
      "evaluation_details/acc_top1_initial": 0.25}


@pytest.mark.slow  # shares the ~1 min end-to-end evaluation
def test_accuracy_and_eval_distance_match_direct_computation(attack_run, evaluated):
  """Acc@1, confidence and δ_eval recomputed without the evaluation pipeline (no batching, no cache)."""
  config, result = evaluated
  run = evaluate.load_attack_run(attack_run)
  generator, generator_variables = model_store.load_model(attack_run / "generator")
  model, variables = model_store.load_model(attack_run / "evaluation_model")
  crop = render.resolve_center_crop(0, TINY_GENERATOR_KWARGS["img_resolution"])
  split = data.load_split(config.dataset, "train")
  real_images, labels = data.load_arrays(split)

  @jax.jit
  def direct(generator_variables, variables, w, real_images):
    fakes = jnp.clip(render.synthesize(generator, generator_variables, w), -1, 1)
    fakes = image_ops.resize(image_ops.center_crop(fakes, crop), EVAL_SIZE)
    reals = augment.normalize(augment.to_unit_range(real_images))
    return model.apply(variables, jnp.concatenate([fakes, reals]), return_features=True)

  logits, features = direct(generator_variables, variables, run.selected_w, real_images)
  num_fakes, targets = len(run.selected), run.selected_targets
  logits = np.asarray(logits[:num_fakes])
  np.testing.assert_allclose(result["metrics"]["acc_top1"], np.mean(np.argmax(logits, -1) == targets))
  confidence = np.take_along_axis(np.asarray(jax.nn.softmax(logits)), targets[:, None], 1)
  np.testing.assert_allclose(result["details"]["mean_target_confidence"], confidence.mean(), rtol=1e-5)
  # Acc@1 of all optimised and of the starting latents (stage 1: the same latents in reverse row order).
  everything = np.asarray(direct(generator_variables, variables, run.optimized_w,
                                 real_images[:1])[0][:len(run.targets)])
  correct = np.argmax(everything, -1) == run.targets
  np.testing.assert_allclose(result["details"]["acc_top1_all_optimized"], correct.mean())
  np.testing.assert_allclose(result["details"]["acc_top1_initial"],
                             np.mean(np.argmax(everything[::-1], -1) == run.targets))
  with open(attack_run / "evaluation" / "per_class.csv") as f:
    per_class = {int(r["class"]): float(r["acc_top1_initial"]) for r in csv.DictReader(f)}
  correct_initial = np.argmax(everything[::-1], -1) == run.targets
  for c in CLASSES:
    np.testing.assert_allclose(per_class[c], np.mean(correct_initial[run.targets == c]), rtol=1e-5)
  features = np.asarray(features, np.float64)
  fake_features, real_features = features[:num_fakes], features[num_fakes:]
  nearest = [min(np.sum((real_features[labels == t] - f) ** 2, axis=1)) for f, t in zip(fake_features, targets)]
  np.testing.assert_allclose(result["metrics"]["delta_eval"], np.mean(nearest), rtol=1e-4)


@pytest.mark.slow  # shares the ~1 min end-to-end evaluation
def test_training_features_are_cached_per_network_and_class(attack_run, evaluated, monkeypatch):
  config, _ = evaluated
  folders = sorted(p.relative_to(attack_run / "cache").parts[0].split("-")[0]
                   for p in (attack_run / "cache").glob("*/*/class_*.npz"))
  assert folders == ["evaluation"] * 3 + ["fid"] * 3
  evaluation, variables = evaluate.load_network("evaluation", config.evaluation_model, "evaluation_model")
  split = data.load_split(config.dataset, "train")
  kwargs = dict(cache_dir=attack_run / "cache", dataset_key=evaluate.dataset_cache_key(config.dataset),
                batch_size=16, mesh=parallel.make_mesh(), ppa_compat=False)
  monkeypatch.setattr(evaluate.feature_cache, "real_features_fn", None)   # nothing may be recomputed
  features, labels, positions = evaluate.training_features((evaluation,), {"evaluation": variables}, split,
                                                           [7, 1], **kwargs)["evaluation"]
  np.testing.assert_array_equal(labels, np.repeat([7, 1], 16))
  np.testing.assert_array_equal(split.labels[positions], labels)
  # The cached features are the network's features of exactly those training images.
  images = np.stack([split.source[int(p)]["image"] for p in positions])
  expected = jax.jit(lambda v, x: evaluation.module.apply(v, x, return_features=True)[1])(
      variables, image_ops.resize(augment.normalize(augment.to_unit_range(images)), EVAL_SIZE))
  np.testing.assert_allclose(features, expected, rtol=1e-4, atol=1e-5)
  with pytest.raises(FileNotFoundError, match="latents.npz"):
    evaluate.load_attack_run(attack_run / "cache")


def test_nearest_training_distances_match_brute_force():
  rng = np.random.default_rng(0)
  real = rng.normal(size=(40, 6)).astype(np.float32) + 5.0
  real_labels = rng.choice([2, 9, 4], size=40)
  fake = rng.normal(size=(13, 6)).astype(np.float32) + 5.0
  fake_labels = rng.choice([9, 2, 4], size=13)
  result = evaluate.nearest_training_distances(fake, fake_labels, real, real_labels)
  fake64, real64 = fake.astype(np.float64), real.astype(np.float64)
  brute = np.array([np.min(np.where(real_labels == t, np.sum((real64 - f) ** 2, axis=1), np.inf))
                    for f, t in zip(fake64, fake_labels)])
  np.testing.assert_allclose(result["distances"], brute, rtol=1e-4)
  assert np.all(real_labels[result["nearest"]] == fake_labels)
  for c in (2, 4, 9):
    np.testing.assert_allclose(result["per_class"][c], brute[fake_labels == c].mean(), rtol=1e-4)
  np.testing.assert_allclose(result["mean"], brute.mean(), rtol=1e-4)
  with pytest.raises(ValueError, match="No training images"):
    evaluate.nearest_training_distances(fake, np.full(13, 5), real, real_labels)


class _MeanColour(nn.Module):
  """FID-network stand-in: its 'pool3 features' are the mean colour of the images it receives."""

  def fid_features(self, images01):
    return images01.mean(axis=(1, 2))


def test_ppa_compat_feeds_the_fid_network_unscaled_images():
  images = jnp.asarray(np.random.default_rng(0).uniform(-1, 1, (2, 4, 4, 3)), jnp.float32)
  net = evaluate.FeatureNetwork("fid", "pytorch_fid", _MeanColour(), 4, "weights-id")
  # pytorch-fid expects [0, 1]; PPA hands it its [-1, 1] images, which the network maps to [-3, 1].
  np.testing.assert_allclose(net.outputs({}, images, ppa_compat=False)["features"],
                             ((images + 1) / 2).mean(axis=(1, 2)), rtol=1e-6)
  np.testing.assert_allclose(net.outputs({}, images, ppa_compat=True)["features"], images.mean(axis=(1, 2)),
                             rtol=1e-6)
  # Cached training features are kept apart when the input scaling differs, and only then.
  assert net.cache_key(True) != net.cache_key(False)
  other = evaluate.FeatureNetwork("fid", "features", _MeanColour(), 4, "weights-id")
  assert other.cache_key(True) == other.cache_key(False) != net.cache_key(False)


# ------------------------------------------------------------------------------------------------ knowledge extraction

COLOURS = np.array([[0.9, -0.8, -0.8], [-0.8, 0.9, -0.8], [-0.8, -0.8, 0.9]], np.float32)
STUDENT_CLASSES = np.array([2, 5, 7])


def _render(texture, w):
  """Latent `w` `[B, 3]` -> flat image of colour tanh(w) plus a fixed texture, `[B, 16, 16, 3]`."""
  return jnp.tanh(w)[:, None, None, :] + texture


def _real_split(per_class, seed):
  rng = np.random.default_rng(seed)
  labels = np.repeat(STUDENT_CLASSES, per_class)
  colours = COLOURS[np.searchsorted(STUDENT_CLASSES, labels)]
  images = np.clip(colours[:, None, None, :] + 0.3 * rng.normal(size=(len(labels), 16, 16, 3)), -1, 1)
  images = np.round((images + 1) * 127.5).astype(np.uint8)
  records = [{"image": image, "label": int(label)} for image, label in zip(images, labels)]
  return pipeline.Split(pipeline.IndexedSource(records, np.arange(len(records))), num_classes=10,
                        num_examples=len(records), class_names=tuple("abcdefghij"), labels=labels.astype(np.int32))


def test_student_learns_a_separable_problem():
  rng = np.random.default_rng(0)
  targets = np.repeat(STUDENT_CLASSES[[2, 0, 1]], 16)   # class ids, not 0..K-1
  colours = COLOURS[np.searchsorted(STUDENT_CLASSES, targets)]
  latents = np.arctanh(0.9 * colours) + 0.3 * rng.normal(size=colours.shape).astype(np.float32)
  texture = 0.2 * rng.normal(size=(16, 16, 3)).astype(np.float32)
  config = knowledge_extraction.student_config()
  config.arch, config.builder_kwargs.base_channels, config.init_weights = "resnet18", 4, ""
  config.image_size, config.num_epochs, config.batch_size, config.eval_batch_size = 16, 10, 16, 24
  config.learning_rate = 0.05
  score = student.knowledge_extraction_score(
      latents, targets, render=_render, render_variables=texture, train_split=_real_split(8, 1),
      test_split=_real_split(8, 2), config=config)
  # Chance is 1/3; a student that learns the colours gets (nearly) everything right.
  assert score["num_classes"] == 3
  assert score["xi_train"] >= 0.9 and score["xi_test"] >= 0.9


def test_student_schedule_and_label_remapping():
  labels, classes = knowledge_extraction.remap_labels(np.array([7, 2, 7, 5]))
  np.testing.assert_array_equal(classes, [2, 5, 7])
  np.testing.assert_array_equal(labels, [2, 0, 2, 1])
  schedule = classifier.epoch_cosine_schedule(0.1, 1e-4, num_epochs=4, steps_per_epoch=3)
  # Constant within an epoch, cosine across epochs (PyTorch CosineAnnealingLR stepped per epoch).
  expected = [1e-4 + (0.1 - 1e-4) * 0.5 * (1 + math.cos(math.pi * e / 4)) for e in range(4)]
  np.testing.assert_allclose([schedule(jnp.int32(s)) for s in range(12)], np.repeat(expected, 3), rtol=1e-6)


@pytest.mark.slow  # a second evaluation of the run (~1 min)
def test_ppas_result_file_evaluates_as_the_run(attack_run, evaluated, tmp_path):
  """The run's selection written as PPA's `optimized_w_selected_<run>.pt` (`jaxmia.export`), then evaluated from
  that file alone (`load_ppa_results`, as `--ppa_results` does) gives the run's numbers for its selected images."""
  _, result = evaluated
  exported = export.export_attack(attack_run, tmp_path / "export", batch_size=4)
  ppa_run = evaluate.load_ppa_results(exported["optimized_w_selected"], targets=str(CLASSES.tolist()),
                                      generator=str(attack_run / "generator"), target=str(attack_run / "target"),
                                      center_crop=0, resize=SIZE)
  config = evaluation_config(attack_run, **{"knowledge_extraction.enabled": False})
  ppa_result = evaluate.evaluate_attack(config, ppa_run)
  assert ppa_result["name"] == f"optimized_w_selected_{attack_run.name}"
  assert (ppa_run.run_dir / "evaluation" / "report.json").is_file()   # where jaxmia.report looks for it
  for key in ("acc_top1", "acc_top5", "delta_eval", "fid", "precision", "recall", "density", "coverage",
              "test_accuracy", "ece"):
    np.testing.assert_allclose(ppa_result["metrics"][key], result["metrics"][key], rtol=1e-5, err_msg=key)
  assert ppa_result["details"]["num_selected"] == result["details"]["num_selected"] == len(ppa_run.selected)
