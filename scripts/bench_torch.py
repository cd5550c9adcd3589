"""The PyTorch side of scripts/bench_*.py: a worker run by the reference interpreter (`JAXMIA_TORCH_PYTHON`).

    $JAXMIA_TORCH_PYTHON scripts/bench_torch.py            # serve requests (jaxmia/benchmarks.py: serve, compare)
    $JAXMIA_TORCH_PYTHON scripts/bench_torch.py --check ppa,sg2   # import what the cases need, print versions
    $JAXMIA_TORCH_PYTHON scripts/bench_torch.py --check gmi,kedmi,rlb,brep  # the same for scripts/bench_lowres.py

It imports the unmodified reference modules at run time from the checkouts in `JAXMIA_SG2_DIR`
(NVlabs/stylegan2-ada-pytorch: `training.networks.Generator`) and `JAXMIA_PPA_DIR` (LukasStruppek/Plug-and-
Play-Attacks: `attacks.optimize.Optimization`, `attacks.initial_selection.find_initial_w`,
`attacks.final_selection.scores_by_transform`); nothing of theirs is copied here. Weights are random (speed
does not depend on them), float32, CPU. A case (a JSON object from the driver) is one of
  attack_optimize  PPA's stage-2 loop (`Optimization.optimize`, Adam(0.005, (0.1, 0.1)), PPA's FFHQ attack
                   transforms, Poincaré loss; the target keeps `requires_grad` as in PPA), seconds per step;
  attack_initial   `find_initial_w` over 3 batches (mapping, synthesis, clip, crop, resize, flip), s/image;
  attack_final     `scores_by_transform` (PPA's stage 3, synthesis not included), seconds per image;
  train            PPA's `Classifier.fit` step (train mode, CrossEntropyLoss(label_smoothing), Adam 1e-3)
                   on random 224 px tensors, seconds per step;
  synthesis        NVlabs' `G.synthesis` forward or forward + backward w.r.t. ws, seconds per call;
  conv             one convolution's forward, input gradient, weight gradient or all three, s per call;
  gmi_gan          GMI's WGAN-GP iteration (`Generator`, `DGWGAN` of AI-secure/GMI-Attack's Celeba/, from
                   `JAXMIA_GMI_DIR`), seconds per iteration;
  kedmi_gan        KED-MI's GAN iteration (`Generator`, `MinibatchDiscriminator`, `VGG16` target, `softXEnt`,
                   `log_sum_exp`, `HLoss` of SCccc21/Knowledge-Enriched-DMI, from `JAXMIA_KEDMI_DIR`), s/iteration;
  gmi_attack       GMI's attack iteration (identity + prior loss, momentum update), seconds per iteration;
  kedmi_attack     KED-MI's attack iteration (reparameterised latents, prior + identity loss, Adam), s/iteration;
  rlb_episode      RLB-MI's episode (HanGyojin/RLB-MI, from `JAXMIA_RLB_DIR`: `SAC.Agent` with its `Actor`,
                   `Critic` and `ReplayBuffer`, `generator.Generator`, `classify.VGG16`) for B agents, seconds
                   per episode of all B;
  brep_iteration   BREP-MI's boundary-repulsion iteration (m-kahla/Label-Only-Model-Inversion-Attacks-via-
                   Boundary-Repulsion, from `JAXMIA_BREP_DIR`: `brep_mi.gen_points_on_sphere`,
                   `brep_mi_utils.is_target_class` and `decision`, `generator.Generator`, `classify.VGG16`) for B
                   latents, seconds per iteration of all B.
The six low-resolution cases write the steps themselves around the imported networks and losses (the official
train scripts, attack.py and main.py cannot be imported or run here: they run their experiment, create folders,
save images or move tensors to CUDA), as the official code runs them: networks in train mode for the GAN steps
(KED-MI's target too, its soft labels not detached, so its weight gradients are computed) and parameters left
trainable in the attacks, so their weight gradients are computed as well. The official VGG16 targets build torchvision's
vgg16_bn with `pretrained=True`; here it is built without weights (random, as everything else).
The official RLB-MI and BREP-MI attack one class at a time (main.py: one fresh `Agent` and one `inversion` per
class; `attack` calls `attack_single_target` per class), so B agents or latents here are B sequential ones, each
with its own networks, optimisers and replay memory (RLB) or point and radius (BREP); jaxmia runs the B in
lockstep (vmapped). See `rlb_episode` and `brep_iteration` for what each follows and leaves out.
torchvision is only needed for its pure-Python ResNets and transforms: when its compiled operators do not
load beside the installed torch (torch 2.13.0 CPU with torchvision 0.28.0, as scripts/setup_reference.sh
installs), the two operator schemas its import registers fake kernels for are declared first.
"""
import contextlib
import importlib.util
import json
import math
import os
import pathlib
import sys
import types

import torch
import torch.nn.functional as F

_benchmarks_file = pathlib.Path(__file__).resolve().parents[1] / "jaxmia" / "benchmarks.py"
_spec = importlib.util.spec_from_file_location("jaxmia_benchmarks", _benchmarks_file)
benchmarks = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(benchmarks)  # by path: jaxmia's package and its dependencies are not installed here

_TORCHVISION_SHIM = []


def import_torchvision():
  """torchvision, after declaring `torchvision::nms` / `qnms` if its compiled extension does not load."""
  try:
    import torchvision
    return torchvision
  except RuntimeError as e:
    if "torchvision::nms" not in str(e):
      raise
  for name in [k for k in sys.modules if k == "torchvision" or k.startswith("torchvision.")]:
    del sys.modules[name]
  library = torch.library.Library("torchvision", "DEF")
  library.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
  library.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
  _TORCHVISION_SHIM.append(library)
  import torchvision
  return torchvision


LOWRES = {"gmi": ("JAXMIA_GMI_DIR", "Celeba", ("generator", "discri", "classify")),
          "kedmi": ("JAXMIA_KEDMI_DIR", "", ("generator", "discri", "classify", "utils")),
          "rlb": ("JAXMIA_RLB_DIR", "", ("generator", "classify", "SAC")),
          "brep": ("JAXMIA_BREP_DIR", "", ("generator", "classify", "brep_mi_utils", "brep_mi"))}
_LOWRES_NAMES = ("generator", "discri", "classify", "utils", "evolve", "facenet", "dataloader", "losses", "SAC",
                 "brep_mi", "brep_mi_utils")


def lowres_modules(repo):
  """The official modules of GMI, KED-MI, RLB-MI or BREP-MI (`LOWRES`), imported unmodified from their checkout.
  The repositories share top-level names (`generator`, `discri`, `classify`, `utils`, ...): each set is imported
  on its own path and kept here (by name), not in sys.modules."""
  def build():
    variable, sub, names = LOWRES[repo]
    folder = os.path.join(os.environ[variable], sub) if sub else os.environ[variable]
    saved = {name: sys.modules.pop(name) for name in _LOWRES_NAMES if name in sys.modules}
    sys.path.insert(0, folder)
    try:
      return types.SimpleNamespace(**{name: importlib.import_module(name) for name in names})
    finally:
      sys.path.remove(folder)
      for name in _LOWRES_NAMES:
        sys.modules.pop(name, None)
      sys.modules.update(saved)

  return cached(("lowres", repo), build)


def add_reference_paths():
  """NVlabs' checkout first: both repositories have a top-level `metrics` package (neither is used)."""
  for key in ("JAXMIA_PPA_DIR", "JAXMIA_SG2_DIR"):
    if os.environ.get(key) and os.environ[key] not in sys.path:
      sys.path.insert(0, os.environ[key])


def check(needs):
  """Imports what the cases need; prints the versions as JSON."""
  torchvision = import_torchvision()
  assert torchvision.models.resnet.resnet18 and torchvision.transforms.RandomResizedCrop
  if "sg2" in needs:
    import training.networks  # noqa: F401
  if "ppa" in needs:
    import attacks.final_selection  # noqa: F401
    import attacks.initial_selection  # noqa: F401
    import attacks.optimize  # noqa: F401
  for repo in LOWRES:
    if repo in needs:
      lowres_modules(repo)
  print(json.dumps(dict(torch=torch.__version__, torchvision=torchvision.__version__,
                        torchvision_shim=bool(_TORCHVISION_SHIM), threads=torch.get_num_threads())))


# ------------------------------------------------------------------------------------------------- networks

_cache = {}


def cached(key, build):
  if key not in _cache:
    _cache[key] = build()
  return _cache[key]


def generator(kwargs):
  """NVlabs' Generator with seeded random weights, frozen and in eval mode as PPA's G_ema."""
  from training.networks import Generator

  def build():
    torch.manual_seed(0)
    return Generator(**kwargs).eval().requires_grad_(False)

  return cached(("G", json.dumps(kwargs, sort_keys=True)), build)


def target(arch, num_classes):
  """torchvision ResNet with a `num_classes` head, as PPA's targets."""
  def build():
    torch.manual_seed(1)
    model = getattr(import_torchvision().models.resnet, arch)(weights=None)
    model.fc = torch.nn.Linear(model.fc.in_features, num_classes)
    return model
  return cached(("target", arch, num_classes), build)


def attack_transforms(crop):
  """PPA's FFHQ attack transformations (`attack.transformations` of its configs), crop scaled to resolution."""
  T = import_torchvision().transforms
  return T.Compose([T.CenterCrop(size=crop), T.Resize(size=224, antialias=True),
                    T.RandomResizedCrop(size=[224, 224], scale=[0.9, 1.0], ratio=[1.0, 1.0], antialias=True)])


class _AttackConfig:
  """What `attacks.optimize.Optimization` uses of PPA's AttackConfigParser."""
  attack = {"discriminator_loss_weight": 0.0, "clip": False}
  log_progress = False

  def create_optimizer(self, params):
    return torch.optim.Adam(params, lr=0.005, weight_decay=0, betas=[0.1, 0.1])

  def create_lr_scheduler(self, optimizer):
    return None


def official_vgg16(classify, num_classes):
  """The official `classify.VGG16` (GMI's / KED-MI's 64x64 target) with torchvision's vgg16_bn built without
  its ImageNet weights (the official constructor asks for `pretrained=True`, a download)."""
  models = import_torchvision().models
  original = models.vgg16_bn
  models.vgg16_bn = lambda *args, **kwargs: original(weights=None)
  try:
    torch.manual_seed(1)
    return classify.VGG16(num_classes)
  finally:
    models.vgg16_bn = original


def set_trainable(module, flag):
  """The official `freeze` / `unfreeze` (every parameter's requires_grad)."""
  for p in module.parameters():
    p.requires_grad_(flag)


def lowres_gan(case):
  """GMI's or KED-MI's GAN iteration as their train scripts run it (Adam 2e-4, (0.5, 0.999); a D step every
  iteration, a G step every `n_critic`-th); a run is `n_critic` iterations."""
  kedmi = case["kind"] == "kedmi_gan"
  m = lowres_modules("kedmi" if kedmi else "gmi")
  b, size, latent, n_critic = case["B"], case["image_size"], case["latent_dim"], case["n_critic"]
  G = m.generator.Generator(latent).train()
  D = (m.discri.MinibatchDiscriminator(n_classes=case["num_classes"]) if kedmi else m.discri.DGWGAN(3)).train()
  g_opt = torch.optim.Adam(G.parameters(), lr=case["lr"], betas=(0.5, 0.999))
  d_opt = torch.optim.Adam(D.parameters(), lr=case["lr"], betas=(0.5, 0.999))
  images = [torch.rand(b, 3, size, size) for _ in range(3 if kedmi else 1)]  # [0, 1], as their loaders
  if kedmi:
    T = official_vgg16(m.classify, case["num_classes"]).train()  # k+1_gan.py never calls T.eval()
    lse, entropy = m.utils.log_sum_exp, m.utils.HLoss()
  state = dict(step=0)

  def critic_loss():
    fakes = G(torch.randn(b, latent))
    if kedmi:
      soft = T(images[0])[-1]  # not detached, as the official soft labels
      unlabelled, fake_logits = D(images[1])[1], D(fakes)[1]
      unsupervised = (F.softplus(lse(unlabelled)).mean() - lse(unlabelled).mean()
                      + F.softplus(lse(fake_logits)).mean())
      return m.utils.softXEnt(D(images[0])[1], soft) + 0.5 * unsupervised
    reals, fakes = images[0], fakes.detach()
    alpha = torch.rand(b, 1, 1, 1)
    points = (reals + alpha * (fakes - reals)).requires_grad_(True)
    grads = torch.autograd.grad(D(points).sum(), points, create_graph=True)[0].flatten(1)
    penalty = torch.square(grads.norm(dim=1) - 1).mean()
    return D(fakes).mean() - D(reals).mean() + case["gp_weight"] * penalty

  def generator_loss():
    fakes = G(torch.randn(b, latent))
    if kedmi:
      fake_features, fake_logits = D(fakes)
      matching = (fake_features.mean(0) - D(images[2])[0].mean(0)).abs().mean()
      return matching + case["entropy_weight"] * entropy(fake_logits)
    return -D(fakes).mean()

  def iteration():
    state["step"] += 1
    set_trainable(G, False)
    set_trainable(D, True)
    loss = critic_loss()
    d_opt.zero_grad()
    loss.backward()
    d_opt.step()
    if state["step"] % n_critic == 0:
      set_trainable(D, False)
      set_trainable(G, True)
      loss = generator_loss()
      g_opt.zero_grad()
      loss.backward()
      g_opt.step()

  run = lambda: [iteration() for _ in range(n_critic)]
  run()
  return run, n_critic


def lowres_attack(case):
  """GMI's (`inversion`: momentum step on z, clipped) or KED-MI's (`dist_inversion`: Adam on (mu, log_var))
  attack iteration on a batch of `B` identities; networks in eval mode, parameters trainable as loaded."""
  kedmi = case["kind"] == "kedmi_attack"
  m = lowres_modules("kedmi" if kedmi else "gmi")
  b, latent, k = case["B"], case["latent_dim"], case["num_classes"]
  torch.manual_seed(0)
  G = m.generator.Generator(latent).eval()
  D = (m.discri.MinibatchDiscriminator(n_classes=k) if kedmi else m.discri.DGWGAN(3)).eval()
  T = official_vgg16(m.classify, k).eval()
  identities = torch.arange(b) % k
  cross_entropy = torch.nn.CrossEntropyLoss()
  lr, weight = case["lr"], case["identity_weight"]
  if kedmi:
    lse = m.utils.log_sum_exp
    mu, log_var = torch.zeros(b, latent, requires_grad=True), torch.ones(b, latent, requires_grad=True)
    solver = torch.optim.Adam([mu, log_var], lr=lr)
  state = dict(z=torch.randn(b, latent).requires_grad_(True), v=torch.zeros(b, latent))

  def iteration():
    if kedmi:
      z = mu + torch.exp(0.5 * log_var) * torch.randn(b, latent)
    else:
      z = state["z"]
    fakes = G(z)
    if kedmi:
      logits = D(fakes)[1]
      prior = F.softplus(lse(logits)).mean() - lse(logits).mean()
      for p in (mu, log_var):
        p.grad = None
    else:
      prior = -D(fakes).mean()
    identity = cross_entropy(T(fakes)[-1], identities)
    (prior + weight * identity).backward()
    if kedmi:
      solver.step()
    else:
      velocity = case["momentum"] * state["v"] - lr * z.grad
      moved = z.detach() + (1 + case["momentum"]) * velocity - case["momentum"] * state["v"]
      state["z"] = moved.clamp(-case["clip"], case["clip"]).requires_grad_(True)
      state["v"] = velocity
    prior.item(), identity.item()

  run = lambda: [iteration() for _ in range(case["steps"])]
  iteration()
  return run, case["steps"]


def rlb_episode(case):
  """RLB-MI's episode as the official `attack.inversion` runs one (`max_step` steps: the agent acts on the state z,
  z' = alpha z + (1 - alpha) a, the images of z' and of a are scored by the target's softmax (both, also when
  alpha = 0), the reward 2 log p_y(z') + 2 log p_y(a) + 8 log max(1e-7, margin), `Agent.step` stores the
  transition and, with more than `SAC.BATCH_SIZE` (256) stored, runs one `Agent.learn`; then the test: a fresh
  z, the policy's action, its image scored without gradients), for B agents in turn, `steps` episodes each. The
  official `Agent` (SAC.py: hidden 256, batch 256, its replay memory, seeded as main.py seeds it) is used
  unmodified; each agent's memory starts with `stored` transitions of the official types (random values) so that
  every episode updates, as after the first 256 episodes of an attack. Left out: what the official loop does
  when the test score improves (saving the image and the actor's weights to disk). Networks in eval mode, G
  and T with trainable parameters, as loaded by main.py."""
  m = lowres_modules("rlb")
  b, latent, k, alpha, max_step = case["B"], case["latent_dim"], case["num_classes"], case["alpha"], case["max_step"]
  if m.SAC.BATCH_SIZE != case["replay_batch"] or case["hidden_size"] != 256:
    raise ValueError(f"the official SAC runs batch {m.SAC.BATCH_SIZE}, hidden 256; the case asks "
                     f"{case['replay_batch']}, {case['hidden_size']}")
  torch.manual_seed(0)
  G = m.generator.Generator(latent).eval()
  T = official_vgg16(m.classify, k).eval()
  agents = [m.SAC.Agent(state_size=latent, action_size=latent, random_seed=case["seed"],
                        hidden_size=case["hidden_size"], action_prior="uniform") for _ in range(b)]
  for agent in agents:
    for _ in range(case["stored"]):
      agent.memory.add(torch.randn(1, latent).numpy(), torch.rand(latent) * 2 - 1, float(torch.randn(())),
                       torch.randn(1, latent).numpy(), True)
  labels = [int(c) for c in torch.arange(b) % k]
  best = [0.0] * b
  weights, floor = case["reward_weights"], case["margin_floor"]

  def probabilities(z):
    return F.softmax(T(G(z).detach())[1], dim=-1)

  def episode(i):
    agent, y = agents[i], labels[i]
    z = torch.randn(1, latent)
    state = z.numpy().copy()
    for t in range(max_step):
      action = agent.act(state)
      a = action.detach().reshape(1, latent)
      z = alpha * z + (1 - alpha) * a
      next_state = z.numpy().copy()
      p_state, p_action = probabilities(z).detach()[0], probabilities(a).detach()[0]
      others = torch.cat((p_state[:y], p_state[y + 1:])).max()
      reward = (weights[0] * float(torch.log(p_state[y])) + weights[1] * float(torch.log(p_action[y]))
                + weights[2] * math.log(max(floor, float(p_state[y] - others))))
      agent.step(state, action, reward, next_state, t == max_step - 1, t)
      state = next_state
    with torch.no_grad():
      z_test = torch.randn(1, latent)
      for _ in range(max_step):
        z_test = alpha * z_test + (1 - alpha) * agent.act(z_test.numpy()).reshape(1, latent)
      score = float(probabilities(z_test)[0, y])
    best[i] = max(best[i], score)

  def run():
    for i in range(b):
      for _ in range(case["steps"]):
        episode(i)

  for i in range(b):
    episode(i)
  return run, case["steps"]


@contextlib.contextmanager
def cuda_as_identity():
  """`Tensor.cuda()` returns the tensor itself (CPU) while the official BREP-MI helpers run: they move their
  random draws to the GPU with `.cuda()`, the only thing that keeps them from running on a CPU."""
  original = torch.Tensor.cuda
  torch.Tensor.cuda = lambda self, *args, **kwargs: self
  try:
    yield
  finally:
    torch.Tensor.cuda = original


def brep_iteration(case):
  """BREP-MI's iteration as the official `brep_mi.attack_single_target` runs one (its inner loop's body), for B
  latents in turn, `steps` iterations each: `gen_points_on_sphere` (32 points at the current radius), their
  labels by `is_target_class`, the radius times 1.3 when more than 75 % are inside, the repulsion direction
  (repulsion_only), the step min(r / 3, 3) of the radius before growth, the moved point clamped to [-1.5, 1.5]
  and labelled by `is_target_class`: rejected if outside (the official loop breaks to its outer loop and starts
  again from the same point), else kept and its loss computed by `decision(score=True)` (one more forward of the
  target on the same image, as officially). Left out: the evaluator's decision on every accepted point and the
  log and image files (evaluation and output, not part of the search). Official functions imported unmodified
  (their `.cuda()` calls made no-ops, `cuda_as_identity`); the loop body is written here. Each latent starts at
  a z ~ N(0, I) clamped to [-1.5, 1.5], its class the target's label of it (as `gen_initial_points_untargeted`
  chooses them), and every round starts again from these points at the initial radius (as jaxmia's side)."""
  m = lowres_modules("brep")
  b, latent, k, n = case["B"], case["latent_dim"], case["num_classes"], case["sphere_points"]
  low, high = case["point_clamp"]
  torch.manual_seed(0)
  G = m.generator.Generator(latent).eval()
  T = official_vgg16(m.classify, k).eval()
  criterion = torch.nn.CrossEntropyLoss()
  starts = torch.randn(b, latent).clamp(min=low, max=high)
  with torch.no_grad():
    labels = [int(c) for c in m.brep_mi_utils.decision(G(starts), T)]

  def iteration(point, radius, label):
    step_size = min(radius * case["step_size_ratio"], case["max_step_size"])
    with cuda_as_identity():
      points, directions = m.brep_mi.gen_points_on_sphere(point, n, radius)
    inside = m.brep_mi_utils.is_target_class(G(points), label, T)
    if inside.sum() > case["expansion_fraction"] * n:
      radius = radius * case["radius_expansion"]
    if case["repulsion_only"]:
      inside = (inside - 1) / 2
    moved = point + step_size * torch.mean(inside.unsqueeze(1) * directions, axis=0) / radius
    moved = moved.clamp(min=low, max=high)
    image = G(moved.unsqueeze(0))
    if m.brep_mi_utils.is_target_class(image, label, T)[0] == -1:
      return point, radius
    m.brep_mi_utils.decision(image, T, score=True, criterion=criterion, target=torch.tensor([label]))
    return moved, radius

  def run():
    for i in range(b):
      point, radius = starts[i], float(case["initial_radius"])
      for _ in range(case["steps"]):
        point, radius = iteration(point, radius, labels[i])

  iteration(starts[0], float(case["initial_radius"]), labels[0])
  return run, case["steps"]


# ---------------------------------------------------------------------------------------------------- cases


def build(case):
  """(function timed once per round, units it covers) of a case; built and warmed up once."""
  kind = case["kind"]
  torch.manual_seed(0)
  if kind == "attack_optimize":
    from attacks.optimize import Optimization
    G, model = generator(case["generator"]), target(case["target"], case["num_classes"])
    model.eval()  # PPA: eval mode, parameters keep requires_grad (their gradients are computed each step)
    synthesis = torch.nn.DataParallel(G.synthesis)  # attack.py wraps both (a pass-through without GPUs)
    synthesis.num_ws = G.num_ws
    optimization = Optimization(torch.nn.DataParallel(model), synthesis, None, attack_transforms(case["crop"]),
                                G.num_ws, _AttackConfig())
    with torch.no_grad():
      w = G.mapping(torch.randn(case["B"], G.z_dim), None, truncation_psi=0.5, truncation_cutoff=8)[:, :1]
    labels = torch.arange(case["B"]) % case["num_classes"]
    optimization.optimize(w.clone(), labels, num_epochs=1)
    return (lambda: optimization.optimize(w.clone(), labels, num_epochs=case["steps"])), case["steps"]
  if kind == "attack_initial":
    from attacks.initial_selection import find_initial_w
    G = generator(case["generator"])
    model = torch.nn.DataParallel(target(case["target"], case["num_classes"]))
    run = lambda n: find_initial_w(G, model, [0], search_space_size=n, clip=True, center_crop=case["crop"],
                                   resize=224, horizontal_flip=True, batch_size=case["B"], truncation_psi=0.5,
                                   truncation_cutoff=8, seed=0)
    run(case["B"])
    return (lambda: run(3 * case["B"])), 3 * case["B"]
  if kind == "attack_final":
    from attacks.final_selection import scores_by_transform
    T = import_torchvision().transforms
    model = torch.nn.DataParallel(target(case["target"], case["num_classes"]))
    model.eval()
    transforms = T.Compose([T.RandomResizedCrop(size=(224, 224), scale=(0.5, 0.9), ratio=(0.8, 1.2), antialias=True),
                            T.RandomHorizontalFlip(0.5)])  # PPA's perform_final_selection, approach 'transforms'
    images = torch.rand(case["B"], 3, 224, 224) * 2 - 1
    labels = torch.arange(case["B"]) % case["num_classes"]
    scores_by_transform(images, labels, model, transforms, 1)
    run = lambda: scores_by_transform(images, labels, model, transforms, case["iterations"])
    return run, case["B"] * case["iterations"]
  if kind == "train":
    model = target(case["arch"], case["num_classes"])
    model.train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, betas=(0.9, 0.999), weight_decay=0.0)
    criterion = torch.nn.CrossEntropyLoss(label_smoothing=case["label_smoothing"])
    x = torch.randn(case["B"], 3, 224, 224)
    y = torch.randint(0, case["num_classes"], (case["B"],))

    def step():
      optimizer.zero_grad()
      loss = criterion(model(x), y)
      loss.backward()
      optimizer.step()
      loss.item()

    for _ in range(case.get("warmup", 1)):
      step()
    return (lambda: [step() for _ in range(case["steps"])]), case["steps"]
  if kind == "synthesis":
    G = generator(case["generator"])
    ws = torch.randn([case["B"], G.num_ws, G.w_dim])

    def call():
      if case["mode"] == "fwd":
        with torch.no_grad():
          G.synthesis(ws, noise_mode="const", force_fp32=True)
      else:
        w = ws.clone().requires_grad_(True)
        G.synthesis(w, noise_mode="const", force_fp32=True).square().sum().backward()

    call()
    return (lambda: [call() for _ in range(case["calls"])]), case["calls"]
  if kind == "conv":
    b, size, cin, cout, k, stride = (case[key] for key in ("B", "size", "cin", "cout", "k", "stride"))
    x = torch.randn(b, cin, size, size)
    w = torch.randn(cout, cin, k, k) / (k * k * cin) ** 0.5
    pad = k // 2
    out_size = (size + 2 * pad - k) // stride + 1
    g = torch.randn(b, cout, out_size, out_size)
    conv = lambda x, w: torch.nn.functional.conv2d(x, w, stride=stride, padding=pad)
    op = case["op"]
    if op == "forward":
      fn = lambda: conv(x, w)
    elif op == "input_grad":
      fn = lambda: torch.nn.grad.conv2d_input(x.shape, w, g, stride=stride, padding=pad)
    elif op == "weight_grad":
      fn = lambda: torch.nn.grad.conv2d_weight(x, w.shape, g, stride=stride, padding=pad)
    else:  # training pass: forward, input and weight gradient
      xr, wr = x.clone().requires_grad_(True), w.clone().requires_grad_(True)
      fn = lambda: torch.autograd.grad(conv(xr, wr), (xr, wr), g)

    def calls():
      with torch.enable_grad() if op == "training" else torch.no_grad():
        for _ in range(case["calls"]):
          fn()

    calls()
    return calls, case["calls"]
  if kind == "batchnorm":  # train mode: batch statistics, forward and the gradient of x, weight and bias
    b, size, channels = case["B"], case["size"], case["cin"]
    x = (torch.randn(b, channels, size, size) + 1.0).requires_grad_(True)
    weight, bias = torch.ones(channels, requires_grad=True), torch.zeros(channels, requires_grad=True)
    g = torch.randn(b, channels, size, size)
    norm = lambda: torch.nn.functional.batch_norm(x, None, None, weight, bias, training=True, eps=1e-5)

    def calls():
      for _ in range(case["calls"]):
        torch.autograd.grad(norm(), (x, weight, bias), g)

    calls()
    return calls, case["calls"]
  if kind in ("gmi_gan", "kedmi_gan"):
    return lowres_gan(case)
  if kind in ("gmi_attack", "kedmi_attack"):
    return lowres_attack(case)
  if kind == "rlb_episode":
    return rlb_episode(case)
  if kind == "brep_iteration":
    return brep_iteration(case)
  raise ValueError(f"unknown case kind {kind!r}")


def handle(request):
  case = request["case"]
  key = ("case", json.dumps(case, sort_keys=True))
  if request["op"] == "prepare":
    timing = benchmarks.timed(lambda: cached(key, lambda: build(case)))
    return dict(setup_s=timing["seconds"], torch=torch.__version__, threads=torch.get_num_threads())
  if request["op"] == "round":
    fn, units = _cache[key]
    return benchmarks.timed(fn, units)
  raise ValueError(f"unknown op {request['op']!r}")


def main():
  add_reference_paths()
  if sys.argv[1:2] == ["--check"]:
    check(set(filter(None, (sys.argv[2] if len(sys.argv) > 2 else "").split(","))))
    return
  import_torchvision()
  benchmarks.serve(handle)


if __name__ == "__main__":
  main()
