"""Writes small StyleGAN2 golden files (`tests/golden/stylegan2_*.npz`) from NVlabs' PyTorch networks.

Development tool, run with a Python that has torch, numpy and absl-py (never needed by jaxmia or its tests), e.g.
the reference environment of `scripts/setup_reference.sh` (`set -a; . DIR/reference.env`):

    $JAXMIA_TORCH_PYTHON scripts/make_stylegan2_goldens.py --sg2_dir=$JAXMIA_SG2_DIR \\
        --recipe=../shared/fixtures/recipe.py --out=tests/golden

It imports `training.networks` from `--sg2_dir` at run time (nothing of NVlabs is stored), builds each
configuration in `CONFIGS` (settings the shared fixtures do not cover: conditional generators, other
resolutions and channel counts, custom filters and activations, skip / orig discriminators), loads weights
made by the fixtures' `recipe.py` rules and stores only the manifest, the seed, inputs and outputs in the
fixtures' format, so `recipe.load_fixture` rebuilds the weights in the tests.
"""
import importlib.util
import json
import os
import sys

import numpy as np
from absl import app, flags

flags.DEFINE_string("sg2_dir", None, "Checkout of NVlabs/stylegan2-ada-pytorch (its training.networks is imported).")
flags.DEFINE_string("recipe", None, "Path of the shared fixtures' recipe.py.")
flags.DEFINE_string("out", None, "Folder of the golden files (tests/golden).")
flags.mark_flags_as_required(["sg2_dir", "recipe", "out"])
FLAGS = flags.FLAGS

SEED = 20240611

CONFIGS = {
    # Conditional generator at 64x64 (c_dim 5, one-hot labels of two classes), skip, clamp active.
    "stylegan2_golden_g64_cond": dict(
        kind="G", batch=2, psi=0.5, cutoff=3, outputs=("img",),
        kwargs=dict(z_dim=16, c_dim=5, w_dim=32, img_resolution=64, img_channels=3,
                    mapping_kwargs=dict(num_layers=3, embed_features=24, layer_features=40),
                    synthesis_kwargs=dict(channel_base=512, channel_max=32, architecture="skip", conv_clamp=4,
                                          num_fp16_res=2))),
    # Grey-scale 16x16 'orig' generator with a [1, 2, 1] filter, relu synthesis and mapping lr multiplier 0.1.
    "stylegan2_golden_g16_orig_gray": dict(
        kind="G", batch=2, psi=0.8, cutoff=None, outputs=("img", "img_ws_none"),
        kwargs=dict(z_dim=8, c_dim=0, w_dim=16, img_resolution=16, img_channels=1,
                    mapping_kwargs=dict(num_layers=2, lr_multiplier=0.1, activation="relu"),
                    synthesis_kwargs=dict(channel_base=256, channel_max=24, architecture="orig",
                                          resample_filter=[1, 2, 1], activation="relu"))),
    # 8x8 resnet generator with an active clamp (conv1 clamp scaled by sqrt(0.5)), 4 image channels.
    "stylegan2_golden_g8_resnet": dict(
        kind="G", batch=3, psi=0.6, cutoff=1, outputs=("img", "img_ws_none"),
        kwargs=dict(z_dim=8, c_dim=0, w_dim=8, img_resolution=8, img_channels=4,
                    mapping_kwargs=dict(num_layers=1),
                    synthesis_kwargs=dict(channel_base=128, channel_max=16, architecture="resnet", conv_clamp=0.5))),
    # A single 4x4 block.
    "stylegan2_golden_g4": dict(
        kind="G", batch=2, psi=0.7, cutoff=None, outputs=("img", "img_ws_none"),
        kwargs=dict(z_dim=8, c_dim=2, w_dim=8, img_resolution=4, img_channels=3,
                    mapping_kwargs=dict(num_layers=2), synthesis_kwargs=dict(channel_base=64, channel_max=8))),
    # Conditional skip discriminator at 16x16: cmap_dim 16, mbstd groups of 2 with 2 channels.
    "stylegan2_golden_d16_skip_cond": dict(
        kind="D", batch=4,
        kwargs=dict(c_dim=3, img_resolution=16, img_channels=3, architecture="skip", channel_base=256,
                    channel_max=32, conv_clamp=2, cmap_dim=16, mapping_kwargs=dict(num_layers=2),
                    epilogue_kwargs=dict(mbstd_group_size=2, mbstd_num_channels=2))),
    # Grey-scale orig discriminator at 8x8, one mbstd group over the whole batch, [1, 2, 1] filter.
    "stylegan2_golden_d8_orig": dict(
        kind="D", batch=3,
        kwargs=dict(c_dim=0, img_resolution=8, img_channels=1, architecture="orig", channel_base=128,
                    channel_max=16, block_kwargs=dict(resample_filter=[1, 2, 1]),
                    epilogue_kwargs=dict(mbstd_group_size=None))),
    # Training losses and their gradients (jaxmia.gan's G main, D main and R1 terms): G skip + D resnet at 16x16
    # with two mbstd groups, as configs/gan_*.py train them.
    "stylegan2_train_golden_16": dict(
        kind="GAN", batch=8,
        g_kwargs=dict(z_dim=8, c_dim=0, w_dim=16, img_resolution=16, img_channels=3,
                      mapping_kwargs=dict(num_layers=2), synthesis_kwargs=dict(channel_base=128, channel_max=16)),
        kwargs=dict(c_dim=0, img_resolution=16, img_channels=3, channel_base=128, channel_max=16,
                    epilogue_kwargs=dict(mbstd_group_size=4))),
    # The same at 8x8 grey-scale with orig G and D, one mbstd group over the batch.
    "stylegan2_train_golden_8_orig": dict(
        kind="GAN", batch=3,
        g_kwargs=dict(z_dim=4, c_dim=0, w_dim=8, img_resolution=8, img_channels=1,
                      mapping_kwargs=dict(num_layers=1), synthesis_kwargs=dict(channel_base=64, channel_max=8,
                                                                               architecture="orig")),
        kwargs=dict(c_dim=0, img_resolution=8, img_channels=1, architecture="orig", channel_base=64,
                    channel_max=8, epilogue_kwargs=dict(mbstd_group_size=None))),
}


def weight_rule(key: str, lr_multiplier: float):
  """(rule, args) of the fixtures' StyleGAN2 weight rules for one state-dict key."""
  name = key.rsplit(".", 1)[-1]
  in_mapping = key.startswith("mapping.") and not key.startswith("mapping.embed")
  scale = 1.0 / lr_multiplier if in_mapping else 1.0
  if name == "resample_filter":
    return "fixed", {}
  if name == "noise_strength":
    return "uniform", {"low": 0.1, "high": 0.3}
  if name in ("noise_const", "const"):
    return "normal", {"mean": 0.0, "std": 1.0}
  if name == "w_avg":
    return "normal", {"mean": 0.0, "std": 0.5}
  if name == "bias":
    mean = 1.0 if ".affine." in key else 0.0
    return "normal", {"mean": mean, "std": 0.1 * scale}
  return "normal", {"mean": 0.0, "std": scale}


def training_terms(torch, G, D, z, reals):
  """NVlabs' loss terms by their definitions (const noise, no mixing) and their parameter gradients.

  G main `mean softplus(-D(G(z)))`, D main `mean softplus(D(G(z))) + mean softplus(-D(x))`, R1 per image
  `|d sum D(x) / dx|^2` (gradients of its mean).
  """
  softplus = torch.nn.functional.softplus
  out = {}

  def grads(prefix, loss, module):
    module.zero_grad(set_to_none=True)
    loss.backward()
    out.update({f"output/{prefix}/{k}": p.grad.numpy() for k, p in module.named_parameters() if p.grad is not None})

  fakes = G(z, None, noise_mode="const", force_fp32=True)
  loss_g = softplus(-D(fakes, None, force_fp32=True)).mean()
  grads("grad_g_main", loss_g, G)
  loss_d = softplus(D(fakes.detach(), None, force_fp32=True)).mean() + softplus(-D(reals, None, force_fp32=True)).mean()
  grads("grad_d_main", loss_d, D)
  x = reals.detach().requires_grad_(True)
  dx, = torch.autograd.grad(D(x, None, force_fp32=True).sum(), x, create_graph=True)
  r1 = dx.square().sum([1, 2, 3])
  grads("grad_r1", r1.mean(), D)
  out.update({"output/fakes": fakes.detach().numpy(), "output/loss_g": loss_g.detach().numpy(),
              "output/loss_d": loss_d.detach().numpy(), "output/r1": r1.detach().numpy()})
  return out


def main(argv):
  # absl only (not jaxmia.cli): this runs under the reference torch interpreter, without jaxmia's dependencies.
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments {' '.join(argv[1:])!r}; only --sg2_dir, --recipe and --out.")
  import torch  # noqa: PLC0415 (only in the reference environment that runs this script)
  sys.path.insert(0, os.path.abspath(FLAGS.sg2_dir))
  from training import networks  # noqa: PLC0415 (NVlabs' code, on sys.path from --sg2_dir)
  spec = importlib.util.spec_from_file_location("recipe", FLAGS.recipe)
  recipe = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(recipe)
  torch.set_num_threads(1)
  os.makedirs(FLAGS.out, exist_ok=True)

  def build(cls, kwargs, prefix=""):
    """(network with recipe weights, its manifest tensors, its fixed tensors); keys carry `prefix`."""
    net = cls(**kwargs).eval()
    lr = kwargs.get("mapping_kwargs", {}).get("lr_multiplier", 0.01)
    tensors, fixed = [], {}
    for key, value in net.state_dict().items():
      rule, rule_args = weight_rule(key, lr)
      if rule == "fixed":
        fixed[prefix + key] = value.numpy()
      tensors.append({"key": prefix + key, "shape": list(value.shape), "dtype": "float32", "rule": rule,
                      "args": rule_args})
    return net, tensors, fixed

  def load(net, state, prefix=""):
    net.load_state_dict({k[len(prefix):]: torch.from_numpy(v) for k, v in state.items() if k.startswith(prefix)},
                        strict=True)

  for name, cfg in CONFIGS.items():
    spec = {k: v for k, v in cfg.items() if k != "kwargs"}
    if cfg["kind"] == "GAN":  # one manifest for both networks: keys "G.<key>" and "D.<key>"
      G, g_tensors, g_fixed = build(networks.Generator, cfg["g_kwargs"], "G.")
      D, d_tensors, d_fixed = build(networks.Discriminator, cfg["kwargs"], "D.")
      fixed = {**g_fixed, **d_fixed}
      manifest = {"format": recipe.FORMAT, "name": name, "builder": "stylegan2_ada.Generator+Discriminator",
                  "kwargs": cfg["kwargs"], "spec": spec, "tensors": g_tensors + d_tensors}
      state = recipe.make_state(manifest, SEED, fixed)
      load(G, state, "G.")
      load(D, state, "D.")
      b, res, ch = cfg["batch"], D.img_resolution, D.img_channels
      z = recipe.make_input((b, G.z_dim), SEED, "z", dist="normal")
      reals = recipe.make_input((b, ch, res, res), SEED, "img")
      arrays = {"input/z": z, "input/img": reals,
                **training_terms(torch, G, D, torch.from_numpy(z), torch.from_numpy(reals))}
      path = os.path.join(FLAGS.out, name + ".npz")
      np.savez_compressed(path, manifest=json.dumps(manifest), seed=np.int64(SEED), meta=json.dumps(
          {"torch": torch.__version__}), **{"fixed/" + k: v for k, v in fixed.items()}, **arrays)
      print(f"{path}: {os.path.getsize(path) / 1024:.0f} kB")
      continue
    cls = networks.Generator if cfg["kind"] == "G" else networks.Discriminator
    net, tensors, fixed = build(cls, cfg["kwargs"])
    manifest = {"format": recipe.FORMAT, "name": name, "builder": f"stylegan2_ada.{cls.__name__}",
                "kwargs": cfg["kwargs"], "spec": spec, "tensors": tensors}
    state = recipe.make_state(manifest, SEED, fixed)
    load(net, state)
    b = cfg["batch"]
    arrays = {}
    with torch.no_grad():
      if cfg["kind"] == "G":
        z = recipe.make_input((b, net.z_dim), SEED, "z", dist="normal")
        ws_in = recipe.make_input((b, net.num_ws, net.w_dim), SEED, "ws_in", dist="normal")
        arrays["input/z"], arrays["input/ws_in"] = z, ws_in
        c = None
        if net.c_dim:
          labels = np.arange(b) % net.c_dim
          c = np.eye(net.c_dim, dtype=np.float32)[labels]
          arrays["input/c"] = c
          c = torch.from_numpy(c)
        ws = net.mapping(torch.from_numpy(z), c, truncation_psi=cfg["psi"], truncation_cutoff=cfg["cutoff"])
        arrays["output/ws"] = ws.numpy()
        if "img" in cfg["outputs"]:
          arrays["output/img"] = net.synthesis(ws, noise_mode="const", force_fp32=True).numpy()
        if "img_ws_none" in cfg["outputs"]:
          arrays["output/img_ws_none"] = net.synthesis(torch.from_numpy(ws_in), noise_mode="none",
                                                       force_fp32=True).numpy()
      else:
        res, ch = net.img_resolution, net.img_channels
        low = np.repeat(np.repeat(recipe.make_input((b, ch, 4, 4), SEED, "img_lowres"), res // 4, 2), res // 4, 3)
        img = (0.8 * low + 0.2 * recipe.make_input((b, ch, res, res), SEED, "img")).astype(np.float32)
        arrays["input/img"] = img
        c = None
        if net.c_dim:
          c = np.eye(net.c_dim, dtype=np.float32)[np.arange(b) % net.c_dim]
          arrays["input/c"] = c
          c = torch.from_numpy(c)
        arrays["output/logits"] = net(torch.from_numpy(img), c, force_fp32=True).numpy()
    path = os.path.join(FLAGS.out, name + ".npz")
    np.savez_compressed(path, manifest=json.dumps(manifest), seed=np.int64(SEED), meta=json.dumps(
        {"torch": torch.__version__}), **{"fixed/" + k: v for k, v in fixed.items()}, **arrays)
    print(f"{path}: {os.path.getsize(path) / 1024:.0f} kB, outputs {[k for k in arrays if k.startswith('output')]}")


if __name__ == "__main__":
  app.run(main)
