"""The low-resolution CelebA protocol end to end on a fake CelebA folder, through the command lines.

One module-scoped run trains the smoke VGG-16 target (configs/celeba64_vgg16.py:smoke) on the private identities,
GMI's and KED-MI's GANs (configs/gan_{gmi,kedmi}_celeba64.py:smoke) on the public split, and attacks with the four
low-resolution kinds (configs/attack_{gmi,kedmi,rlb,brep}_celeba64.py:smoke). The programs run in a folder laid
out as the configs' defaults (`runs/celeba64_vgg16`, `runs/gan_gmi_celeba64`, `runs/gan_kedmi_celeba64`), and the
attacks get no generator, discriminator or target path: the defaults must name what the GAN programs export.
Independent programs run two at a time.
"""
import json
import pathlib
import subprocess

import numpy as np
import pytest
from PIL import Image

from conftest import REPO, start_program, write_fake_celeba
from jaxmia import data, model_store
from jaxmia.attack import render
from jaxmia.attack import run as attack_run
from jaxmia.config import load_file
from jaxmia.evaluate.attack_run import load_attack_run
from jaxmia.models import xla_cpu

PRIVATE = {101 + i: 10 for i in range(6)}  # identity -> images: the 6 with most images are the target's classes
PUBLIC = {201 + i: 6 for i in range(8)}    # 48 public images, the GAN smoke configs' `public_subset`
LATENT = 100                               # GMI's z
TIMEOUT = 1200                             # seconds per program (generous: compiling on a busy host is slow)


def _face(identity: int, index: int) -> Image.Image:
  """A 40x48 image (non-square, like the 178x218 originals): the identity's colour and a bar at its own height,
  with per-file noise."""
  rng = np.random.default_rng([identity, index])
  pixels = np.full((48, 40, 3), [(37 * identity) % 256, (91 * identity) % 256, (53 * identity) % 256], np.float64)
  row = 6 + 4 * (identity % 8)
  pixels[row:row + 6, 8:32] = 255 - pixels[row:row + 6, 8:32]
  pixels += rng.normal(0, 12, pixels.shape)
  return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def _identities() -> list[int]:
  """Identity of each file, interleaved in a fixed order."""
  ids = [identity for counts in (PRIVATE, PUBLIC) for identity, n in counts.items() for _ in range(n)]
  return [ids[i] for i in np.random.default_rng(0).permutation(len(ids))]


def _run_together(root: pathlib.Path, *commands) -> None:
  """Runs `(name, module, *args)` commands concurrently (in `root`, logs in `root/logs`); all must succeed."""
  (root / "logs").mkdir(exist_ok=True)
  running = []
  for name, module, *args in commands:
    log = open(root / "logs" / f"{name}.log", "w")  # noqa: SIM115 (closed below)
    running.append((name, log, start_program("-m", module, *args, cwd=root, stdout=log, stderr=subprocess.STDOUT)))
  failed = []
  try:
    for name, log, proc in running:
      code = proc.wait(timeout=TIMEOUT)
      if code:
        failed.append(f"{name} exited with {code}:\n{(root / 'logs' / f'{name}.log').read_text()[-3000:]}")
  finally:  # a timeout leaves no program running
    for name, log, proc in running:
      if proc.poll() is None:
        proc.kill()
        proc.wait()
      log.close()
  assert not failed, "\n".join(failed)


def _config(name: str, variant: str = "smoke") -> str:
  return f"--config={REPO / 'configs' / name}.py:{variant}"


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  """The folder whose `runs/` holds the target, both GANs and the attacks (`runs/attack_<kind>`, and
  `runs/attack_gmi_again`, a rerun of GMI in a fresh workdir)."""
  root = tmp_path_factory.mktemp("lowres_celeba")
  manual = write_fake_celeba(root / "celeba", _identities(), _face)
  dataset = [f"--config.dataset.manual_dir={manual}", f"--config.dataset.data_dir={root / 'tfds'}",
             "--config.dataset.num_identities=6"]
  # Prepared once here, so the programs below only read it.
  config = data.get_dataset_config("celeba")
  config.update(manual_dir=str(manual), data_dir=str(root / "tfds"), image_size=64, num_identities=6)
  data.load_split(config, "public")
  _run_together(
      root,
      ("target", "jaxmia.train", _config("celeba64_vgg16"), "--workdir=runs/celeba64_vgg16", *dataset),
      ("gan_gmi", "jaxmia.gan_gmi", _config("gan_gmi_celeba64"), "--workdir=runs/gan_gmi_celeba64", *dataset))
  attack = lambda kind, workdir=None: (kind, "jaxmia.attack", _config(f"attack_{kind}_celeba64"),
                                       f"--workdir=runs/{workdir or 'attack_' + kind}")
  _run_together(root, ("gan_kedmi", "jaxmia.gan_kedmi", _config("gan_kedmi_celeba64"),
                       "--workdir=runs/gan_kedmi_celeba64", *dataset), attack("gmi"))
  _run_together(root, attack("kedmi"), attack("rlb"))
  _run_together(root, attack("brep"), ("gmi_again", *attack("gmi", "attack_gmi_again")[1:]))
  return root / "runs"


def test_the_gans_train_on_the_public_split_and_export_what_the_attacks_read(runs):
  for name in ("gan_gmi_celeba64", "gan_kedmi_celeba64"):
    record = json.loads((runs / name / "run.json").read_text())
    # The public subset (48 of 48 images of the 8 public identities) in 6 iterations of 8.
    assert list(record["dataset"]) == ["public"] and ": 48 examples," in record["dataset"]["public"]
  generator, variables = model_store.load_model(runs / "gan_gmi_celeba64" / "generator")
  images = generator.apply(variables, np.zeros((2, LATENT), np.float32))
  assert images.shape == (2, 64, 64, 3) and np.abs(images).max() <= 1
  discriminator, variables = model_store.load_model(runs / "gan_kedmi_celeba64" / "discriminator")
  _, logits = discriminator.apply(variables, np.asarray(images))
  assert logits.shape == (2, 6)  # KED-MI's discriminator classifies into the target's 6 identities
  target, variables = model_store.load_model(runs / "celeba64_vgg16" / "model")
  assert target.apply(variables, np.asarray(images)).shape == (2, 6)


@pytest.mark.parametrize("kind, classes, per_class", [("gmi", 3, 2), ("kedmi", 6, 2), ("rlb", 6, 1),
                                                      ("brep", 3, 2)])
def test_each_attack_writes_the_run_layout_of_its_classes(runs, kind, classes, per_class):
  run = load_attack_run(runs / f"attack_{kind}")  # what jaxmia.evaluate reads
  summary = json.loads((runs / f"attack_{kind}" / "summary.json").read_text())
  assert summary["kind"] == kind and summary["config"]["attack"]["resize"] == 64
  np.testing.assert_array_equal(run.targets, np.repeat(np.arange(classes), per_class))
  assert run.optimized_w.shape == (classes * per_class, 1, LATENT)
  assert np.isfinite(run.optimized_w).all()
  assert set(run.selected_targets.tolist()) == set(range(classes))
  with np.load(runs / f"attack_{kind}" / "latents.npz") as latents:
    if kind == "gmi":  # the best of 2 restarts per class, z clipped to [-1, 1]
      np.testing.assert_array_equal(run.selected_targets, np.arange(3))
      assert np.abs(run.optimized_w).max() <= 1
    if kind == "rlb":  # 12 episodes of one step: the step's image and the test image each
      np.testing.assert_array_equal(latents["queries"], np.full(6, 12 * 2))
      assert summary["queries"]["total"] == 6 * 24
    if kind == "brep":  # 33 queries per iteration (32 sphere points and the move), points in the official z box
      queries, iterations, found = latents["queries"], latents["iterations"], latents["initial_found"]
      np.testing.assert_array_equal(queries, np.where(found, iterations * 33, 0))
      assert (iterations[found] >= 1).all() and iterations.max() <= 4
      assert summary["queries"]["total"] == queries.sum()
      assert summary["classes_without_start"] == sorted({int(c) for c in run.targets[~found]})
      assert summary["num_start_draws"] == (64 if not found.all() else summary["num_start_draws"]) <= 64
      assert summary["queries"]["per_class"] == {str(c): int(queries[run.targets == c].sum()) for c in range(3)}
      assert np.abs(latents["initial_w"]).max() <= 1.5 and np.abs(run.optimized_w).max() <= 1.5


def test_a_rerun_in_a_fresh_workdir_gives_the_same_latents(runs):
  first, again = (np.load(runs / name / "latents.npz") for name in ("attack_gmi", "attack_gmi_again"))
  with first, again:
    for name in ("targets", "selected_indices", "initial_w", "optimized_w"):
      np.testing.assert_array_equal(first[name], again[name], err_msg=name)


@pytest.mark.parametrize("kind", ["gmi", "kedmi", "rlb", "brep"])
def test_each_attack_compiles_its_core_as_its_config_says(runs, kind, monkeypatch, tmp_path):
  """`attack.xla_cpu_options` 'step' hands the step options to the attack's jitted core: options the compiler
  rejects make the run fail there. RLB-MI's and BREP-MI's configs ask for them, GMI's and KED-MI's for XLA's
  defaults."""
  monkeypatch.chdir(runs.parent)  # the configs' default paths, `runs/...`
  monkeypatch.setattr(render, "_COMPILED", {})  # build the attacks' jitted functions afresh
  monkeypatch.setattr(xla_cpu, "step_compiler_options", lambda: {xla_cpu.YNN_FUSION_OPTION: "NO_SUCH_TYPE"})
  config = load_file(REPO / "configs" / f"attack_{kind}_celeba64.py").get_config("smoke")
  assert config.attack.xla_cpu_options == ("step" if kind in ("rlb", "brep") else "default")
  config.attack.xla_cpu_options = "step"
  with pytest.raises(Exception, match="NO_SUCH_TYPE"):
    attack_run.run_attack(config, tmp_path / kind)
