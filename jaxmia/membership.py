"""Membership inference against a trained target: `python -m jaxmia.membership --config=configs/membership_digits.py
--workdir=runs/membership_digits`.

Members are the target's training images, non-members its held-out private images (the test split). Three attacks
score every example (higher = more likely a member), and each is summarised by its ROC curve: AUC, balanced
accuracy (the best threshold's `(TPR + TNR) / 2`) and TPR at 0.1 % and 1 % FPR.

- **Threshold attacks** (Yeom et al., 2018): the negative cross-entropy loss and the true-class confidence
  (`loss_scores`, `confidence_scores`); `threshold_balanced_accuracy` at Yeom's threshold, the mean training loss.
- **Offline LiRA** (Carlini et al., 2022): shadow models trained like the target on subsets of the public split
  never see any evaluated example, so all are OUT models. The logit-scaled confidence
  `phi = log(p_y / (1 - p_y))` (`logit_scaled_confidence`) of each example under the shadows is fitted by a
  Gaussian `N(mu, sigma^2)` (sigma per example, or one pooled sigma: the paper's choice for few shadows), and
  the score is the one-sided `log Phi((phi_target - mu) / sigma)` (`lira_offline_scores`).
- **DtC, distance to confident** (white-box): per example, the smallest L2 (or L-inf) perturbation within the
  image box `[-1, 1]` that makes the model give another class probability >= `threshold`
  (`distance_to_confident`: bisection over the radius, projected gradient ascent at each radius, batched and
  jitted). Members sit farther from such points than non-members when the model memorises.

Everything above `# program` is pure: scores of logits, ROC metrics of scores, and evaluators that receive a
`predict_fn(images [B, H, W, 3] in [-1, 1]) -> logits [B, C]` (a pure, differentiable JAX function); nothing there
imports the trainer. The program at the bottom loads the target and the shadows with `jaxmia.model_store` and
trains missing shadows with `jaxmia.train.train_and_evaluate` (the target's own `config.json`, other seeds, a
public subset of the size of the target's training set; or one `shadow_config` a study shares between its
targets). It writes `report.json`, `scores.npz`, `roc.png` (linear and log-log ROC curves of all attacks) and
`dtc.png` (the DtC distributions of members and non-members).
"""
import functools
import json
import pathlib

from absl import flags, logging
import jax
import jax.numpy as jnp
import ml_collections
from ml_collections import config_flags
import numpy as np

from jaxmia import cli, files
from jaxmia.cli import number, one_of

# ----------------------------------------------------------------------------------------------- scores


def _true_class(values: jax.Array, labels: jax.Array) -> jax.Array:
  return jnp.take_along_axis(values, jnp.asarray(labels, jnp.int32)[:, None], axis=-1)[:, 0]


@jax.jit
def loss_scores(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """Yeom et al.'s score: minus the cross-entropy loss, `log p_y`, `[N]`."""
  return _true_class(jax.nn.log_softmax(jnp.asarray(logits, jnp.float32), axis=-1), labels)


@jax.jit
def confidence_scores(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """The true-class confidence `p_y`, `[N]`."""
  return jnp.exp(loss_scores(logits, labels))


@jax.jit
def logit_scaled_confidence(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """LiRA's statistic `log(p_y / (1 - p_y)) = z_y - logsumexp_{c != y} z_c`, `[N]`, exact also for p_y near 1."""
  logits = jnp.asarray(logits, jnp.float32)
  is_label = jax.nn.one_hot(labels, logits.shape[-1], dtype=bool)
  others = jax.nn.logsumexp(jnp.where(is_label, -jnp.inf, logits), axis=-1)
  return _true_class(logits, labels) - others


# ----------------------------------------------------------------------------------------------- ROC metrics


@jax.jit
def roc_curve(member_scores: jax.Array, nonmember_scores: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
  """`(fpr, tpr, thresholds)`, each `[N + 1]` (N = all scores): the attack "member iff score >= threshold" at
  every threshold, from the strictest (`inf`: nothing flagged, the point (0, 0)) to the loosest.

  Tied scores form one point (repeated once per tied example, so the arrays have a fixed size under jit); the
  curve is non-decreasing in both coordinates and ends at (1, 1).
  """
  scores = jnp.concatenate([jnp.ravel(member_scores), jnp.ravel(nonmember_scores)]).astype(jnp.float32)
  is_member = jnp.concatenate([jnp.ones(jnp.size(member_scores)), jnp.zeros(jnp.size(nonmember_scores))])
  order = jnp.argsort(-scores, stable=True)
  sorted_scores, sorted_member = scores[order], is_member[order]
  true_pos, false_pos = jnp.cumsum(sorted_member), jnp.cumsum(1.0 - sorted_member)
  group_end = jnp.searchsorted(-sorted_scores, -sorted_scores, side="right") - 1  # last index of each tie group
  tpr = jnp.concatenate([jnp.zeros(1), true_pos[group_end] / jnp.size(member_scores)])
  fpr = jnp.concatenate([jnp.zeros(1), false_pos[group_end] / jnp.size(nonmember_scores)])
  return fpr, tpr, jnp.concatenate([jnp.full(1, jnp.inf), sorted_scores])


@jax.jit
def roc_auc(fpr: jax.Array, tpr: jax.Array) -> jax.Array:
  """Area under a `roc_curve` (trapezoids: a tie between a member and a non-member counts one half)."""
  return jnp.sum((fpr[1:] - fpr[:-1]) * (tpr[1:] + tpr[:-1]) / 2)


@jax.jit
def tpr_at_fpr(fpr: jax.Array, tpr: jax.Array, target_fpr: float) -> jax.Array:
  """The highest TPR of a threshold whose FPR is at most `target_fpr`."""
  return jnp.max(jnp.where(fpr <= target_fpr, tpr, 0.0))


@jax.jit
def balanced_accuracy(fpr: jax.Array, tpr: jax.Array) -> jax.Array:
  """The best threshold's balanced accuracy `(TPR + 1 - FPR) / 2` (0.5: no better than chance)."""
  return jnp.max((tpr + 1.0 - fpr) / 2)


@jax.jit
def threshold_balanced_accuracy(member_scores: jax.Array, nonmember_scores: jax.Array, threshold) -> jax.Array:
  """Balanced accuracy of the attack "member iff score >= threshold" at one given threshold."""
  return (jnp.mean(member_scores >= threshold) + jnp.mean(nonmember_scores < threshold)) / 2


def attack_metrics(member_scores, nonmember_scores, fprs=(0.001, 0.01)) -> tuple[dict, dict]:
  """`({'auc', 'balanced_accuracy', 'tpr_at_<f>_fpr' per f in fprs}, {'fpr', 'tpr'} curve as NumPy arrays)`."""
  fpr, tpr, _ = roc_curve(jnp.asarray(member_scores), jnp.asarray(nonmember_scores))
  summary = {"auc": float(roc_auc(fpr, tpr)), "balanced_accuracy": float(balanced_accuracy(fpr, tpr))}
  for f in fprs:
    summary[f"tpr_at_{f:g}_fpr"] = float(tpr_at_fpr(fpr, tpr, f))
  return summary, {"fpr": np.asarray(fpr), "tpr": np.asarray(tpr)}


# ----------------------------------------------------------------------------------------------- offline LiRA


@functools.partial(jax.jit, static_argnames="global_variance")
def lira_offline_scores(target_phi: jax.Array, shadow_phi: jax.Array, global_variance: bool = True,
                        min_std: float = 1e-6) -> jax.Array:
  """Offline LiRA scores `[N]`: `log Phi((target_phi - mu) / sigma)` with `mu` the mean of each example's
  `shadow_phi [S, N]` (all OUT shadows) and `sigma` its standard deviation over the shadows
  (`global_variance=False`, needs S >= 2) or, as Carlini et al. do for few shadows, one standard deviation of
  all `S * N` shadow values (`global_variance=True`). `sigma` is at least `min_std`."""
  shadow_phi = jnp.asarray(shadow_phi, jnp.float32)
  mu = jnp.mean(shadow_phi, axis=0)
  std = jnp.std(shadow_phi) if global_variance else jnp.std(shadow_phi, axis=0)
  z = (jnp.asarray(target_phi, jnp.float32) - mu) / jnp.maximum(std, min_std)
  return jax.scipy.stats.norm.logcdf(z)


# ----------------------------------------------------------------------------------------------- DtC

NORMS = ("l2", "linf")


def _other_class_log_confidence(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """`max_{c != y} log p_c`, `[B]`."""
  log_probs = jax.nn.log_softmax(jnp.asarray(logits, jnp.float32), axis=-1)
  return jnp.max(jnp.where(jax.nn.one_hot(labels, log_probs.shape[-1], dtype=bool), -jnp.inf, log_probs), -1)


def as_pytree_fn(predict_fn) -> jax.tree_util.Partial:
  """`predict_fn` as a `jax.tree_util.Partial`, a pytree that jitted functions take as an ordinary argument: the
  arrays it closes over (a `Partial(apply, variables)`) are traced, not baked into the program as constants, and a
  plain function is compiled once per function object."""
  return predict_fn if isinstance(predict_fn, jax.tree_util.Partial) else jax.tree_util.Partial(predict_fn)


@jax.jit
def predict(predict_fn: jax.tree_util.Partial, images: jax.Array) -> jax.Array:
  """`predict_fn(images)`, jitted (`predict_fn` from `as_pytree_fn`)."""
  return predict_fn(images)


def distance_to_confident(predict_fn, images: jax.Array, labels: jax.Array, **kwargs) -> tuple[jax.Array, jax.Array]:
  """`_distance_to_confident` (see there) with `predict_fn` passed through `as_pytree_fn`."""
  return _distance_to_confident(as_pytree_fn(predict_fn), images, labels, **kwargs)


@functools.partial(jax.jit, static_argnames=("norm", "num_bisections", "num_steps"))
def _distance_to_confident(predict_fn, images: jax.Array, labels: jax.Array, *, threshold: float = 0.5,
                          norm: str = "l2", max_radius: float = 16.0, num_bisections: int = 10,
                          num_steps: int = 20, step_size: float = 2.5, clip_min: float = -1.0,
                          clip_max: float = 1.0) -> tuple[jax.Array, jax.Array]:
  """Per example, the smallest `norm` radius at which projected gradient ascent finds a perturbation making
  `predict_fn` give some class other than the label probability >= `threshold`: `(distances [B], found [B])`.

  `images [B, ...]` (`x + delta` is kept in `[clip_min, clip_max]`), `labels [B]` int. The radius is bisected
  `num_bisections` times in `[0, max_radius]` (resolution `max_radius / 2**num_bisections`; the result is the
  smallest radius that succeeded, an upper bound of the true distance up to the search's optimality); at each
  radius `num_steps` steps of length `step_size * radius / num_steps` follow the normalised (L2) or sign (L-inf)
  gradient of `max_{c != y} log p_c` and project back onto the ball and the box. Examples already confidently
  on another class have distance 0; examples that stay below the threshold at `max_radius` get `inf` and
  `found = False`. `predict_fn` must treat examples independently (e.g. BatchNorm in inference mode).
  """
  if norm not in NORMS:
    raise ValueError(f"norm must be one of {NORMS}, got {norm!r}.")
  x0 = jnp.asarray(images, jnp.float32)
  batch = x0.shape[0]
  log_threshold = jnp.log(threshold)
  expand = (batch,) + (1,) * (x0.ndim - 1)

  def objective(x):
    return _other_class_log_confidence(predict_fn(x), labels)

  def flat_norm(v):
    return jnp.sqrt(jnp.sum(jnp.square(v.reshape(batch, -1)), axis=1))

  def succeeds_within(radius):  # radius [B] -> bool [B]
    r = radius.reshape(expand)

    def step(_, carry):
      delta, success = carry
      values, vjp = jax.vjp(objective, x0 + delta)
      success = success | (values >= log_threshold)
      (grad,) = vjp(jnp.ones_like(values))
      if norm == "l2":
        delta = delta + (step_size / num_steps) * r * grad / jnp.maximum(flat_norm(grad), 1e-12).reshape(expand)
        delta = delta * jnp.minimum(1.0, radius / jnp.maximum(flat_norm(delta), 1e-12)).reshape(expand)
      else:
        delta = jnp.clip(delta + (step_size / num_steps) * r * jnp.sign(grad), -r, r)
      delta = jnp.clip(x0 + delta, clip_min, clip_max) - x0  # inside the box; never leaves the ball
      return delta, success

    delta, success = jax.lax.fori_loop(0, num_steps, step, (jnp.zeros_like(x0), jnp.zeros(batch, bool)))
    return success | (objective(x0 + delta) >= log_threshold)

  at_zero = objective(x0) >= log_threshold
  within_max = succeeds_within(jnp.full(batch, max_radius, jnp.float32))

  def bisect(_, bounds):
    low, high = bounds
    mid = (low + high) / 2
    success = succeeds_within(mid)
    return jnp.where(success, low, mid), jnp.where(success, mid, high)

  _, high = jax.lax.fori_loop(0, num_bisections, bisect,
                              (jnp.zeros(batch, jnp.float32), jnp.full(batch, max_radius, jnp.float32)))
  distances = jnp.where(at_zero, 0.0, jnp.where(within_max, high, jnp.inf))
  return distances, at_zero | within_max


def distribution_summary(values) -> dict:
  """Mean, median, quartiles of the finite `values` and the fraction that is finite (DtC found)."""
  values = np.asarray(values, np.float64)
  finite = values[np.isfinite(values)]
  stats = {"n": int(values.size), "found_fraction": float(finite.size / max(values.size, 1))}
  if finite.size:
    stats.update(mean=float(finite.mean()), median=float(np.median(finite)),
                 q25=float(np.quantile(finite, 0.25)), q75=float(np.quantile(finite, 0.75)))
  return stats


# ----------------------------------------------------------------------------------------------- batching


def batched(fn, arrays: tuple, batch_size: int):
  """`fn(*batch)` over the leading axis of `arrays` in batches of `batch_size` (the last one padded by repeating
  its final row, so one compiled shape serves every batch); outputs concatenated on the host (a tuple if `fn`
  returns one)."""
  n = len(arrays[0])
  outputs = []
  for start in range(0, n, batch_size):
    rows = [np.asarray(a[start:start + batch_size]) for a in arrays]
    count = len(rows[0])
    if count < batch_size:
      rows = [np.concatenate([r, np.repeat(r[-1:], batch_size - count, axis=0)]) for r in rows]
    out = jax.device_get(fn(*rows))
    outputs.append(jax.tree.map(lambda o, count=count: np.asarray(o)[:count], out))
  if isinstance(outputs[0], tuple):
    return tuple(np.concatenate(parts) for parts in zip(*outputs))
  return np.concatenate(outputs)


# ----------------------------------------------------------------------------------------------- program

CONFIG_RULES = (
    ("seed", "an integer", number(integer=True)),
    ("max_examples", "an integer >= 0 (0: all)", number(0, integer=True)),
    ("batch_size", "a positive integer", number(1, integer=True)),
    ("lira.num_shadows", "an integer >= 0 (0: no LiRA)", number(0, integer=True)),
    ("lira.shadow_train_size", "an integer >= 0 (0: the target's training-set size)", number(0, integer=True)),
    ("lira.global_variance", "True or False", one_of(True, False)),
    ("dtc.max_examples", "an integer >= 0 (0: no DtC)", number(0, integer=True)),
    ("dtc.threshold", "in (0, 1)", number(0, 1, low_open=True, high_open=True)),
    ("dtc.norm", f"one of {NORMS}", one_of(*NORMS)),
    ("dtc.max_radius", "> 0", number(0, low_open=True)),
    ("dtc.num_bisections", "a positive integer", number(1, integer=True)),
    ("dtc.num_steps", "a positive integer", number(1, integer=True)),
    ("dtc.step_size", "> 0", number(0, low_open=True)),
    ("dtc.batch_size", "a positive integer", number(1, integer=True)),
)


def _subsample(count: int, limit: int, rng: np.random.Generator) -> np.ndarray:
  return np.arange(count) if not limit or limit >= count else np.sort(rng.choice(count, limit, replace=False))


def _predict_fn(path):
  from jaxmia import model_store  # noqa: PLC0415 (the program's edge)
  module, variables = model_store.load_model(path)
  variables = jax.device_put(variables)
  return jax.tree_util.Partial(lambda v, x: module.apply(v, x, train=False), variables), module


def _train_shadow(train_config, public, index: int, size: int, seed: int, workdir: pathlib.Path):
  """Trains (or resumes) shadow `index` on a seeded subset of `size` public examples; returns its model path."""
  from jaxmia import train  # noqa: PLC0415 (only the program trains shadows)
  from jaxmia.data.pipeline import IndexedSource, Split  # noqa: PLC0415
  if (workdir / "model" / "jaxmia.json").exists():
    return workdir / "model"
  order = np.random.default_rng([seed, index]).permutation(public.num_examples)
  parts = {"train": np.sort(order[:size]), "test": np.sort(order[size:]) if size < len(order) else np.sort(order)}
  splits = {name: Split(IndexedSource(public.source.records, public.source.indices[idx]), public.num_classes,
                        len(idx), public.class_names, public.labels[idx]) for name, idx in parts.items()}
  config = ml_collections.ConfigDict(train_config.to_dict())
  config.seed = int(train_config.seed) + 1000 * (index + 1)
  config.overwrite = False
  config.max_steps = -1
  logging.info("Training shadow %d on %d public examples in %s.", index, size, workdir)
  train.train_and_evaluate(config, workdir, splits=splits)
  return workdir / "model"


def _plot(curves: dict, dtc: dict | None, workdir: pathlib.Path) -> None:
  plt = files.pyplot()
  fig, axes = plt.subplots(1, 2, figsize=(10, 4.5))
  for name, (summary, curve) in curves.items():
    label = f"{name} (AUC {summary['auc']:.3f})"
    axes[0].plot(curve["fpr"], curve["tpr"], label=label)
    axes[1].plot(np.maximum(curve["fpr"], 1e-5), np.maximum(curve["tpr"], 1e-5), label=label)
  for ax in axes:
    ax.plot([1e-5, 1], [1e-5, 1], "k:", lw=0.8)
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
  axes[1].set_xscale("log")
  axes[1].set_yscale("log")
  axes[1].set_xlim(1e-4, 1)
  axes[1].set_ylim(1e-4, 1)
  axes[0].legend(fontsize=8)
  axes[0].set_title("ROC")
  axes[1].set_title("ROC (log-log)")
  fig.tight_layout()
  fig.savefig(workdir / "roc.png", dpi=120)
  plt.close(fig)
  if dtc is not None:
    fig, ax = plt.subplots(figsize=(5, 4))
    finite = [d[np.isfinite(d)] for d in (dtc["members"], dtc["nonmembers"])]
    bins = np.histogram_bin_edges(np.concatenate(finite) if sum(map(len, finite)) else [0, 1], bins=30)
    for values, name, total in zip(finite, ("members", "non-members"), (dtc["members"], dtc["nonmembers"])):
      label = f"{name} ({len(values)} of {len(total)} found)"
      if len(values):
        ax.hist(values, bins=bins, alpha=0.5, density=True, label=label)
      else:
        ax.plot([], [], label=label)
    ax.set_xlabel(f"DtC ({dtc['norm']} distance to confidence >= {dtc['threshold']:g} on another class)")
    ax.set_ylabel("density")
    ax.legend()
    fig.tight_layout()
    fig.savefig(workdir / "dtc.png", dpi=120)
    plt.close(fig)


def evaluate_membership(config: ml_collections.ConfigDict, workdir,
                        shadow_config: ml_collections.ConfigDict | None = None) -> dict:
  """Runs the configured attacks on the target of `config.target_workdir`; writes and returns the report.

  `shadow_config`: the `jaxmia.train` config the LiRA shadows are trained with (default: the target's own
  `config.json`; shadow `i` gets its seed + 1000 (i + 1)). A study passes one config for all its targets and one
  `config.lira.shadow_workdir`, so its shadows are trained once and shared by every target (jaxmia.train refuses
  a shadow workdir that was trained with another config instead of reusing it).
  """
  from jaxmia import data  # noqa: PLC0415 (the program's edge)
  from jaxmia.data import augment  # noqa: PLC0415
  cli.check_config(config, CONFIG_RULES)
  workdir = files.check_workdir(workdir)
  target_dir = pathlib.Path(config.target_workdir)
  if not (target_dir / "config.json").exists() or not (target_dir / "model").exists():
    raise FileNotFoundError(f"config.target_workdir={str(target_dir)!r} is not a finished jaxmia.train workdir "
                            "(config.json and model/); train the target first.")
  train_config = ml_collections.ConfigDict(json.loads((target_dir / "config.json").read_text()))
  rng = np.random.default_rng(config.seed)
  groups, sizes = {}, {}
  for group, split_name in (("members", "train"), ("nonmembers", "test")):
    split = data.load_split(train_config.dataset, split_name)
    sizes[group] = split.num_examples
    images, labels = data.load_arrays(split)
    keep = _subsample(len(labels), config.max_examples, rng)
    groups[group] = (images[keep], labels[keep])
  images = np.concatenate([groups["members"][0], groups["nonmembers"][0]])
  labels = np.concatenate([groups["members"][1], groups["nonmembers"][1]])
  is_member = np.arange(len(labels)) < len(groups["members"][1])
  preprocess = jax.jit(functools.partial(augment.eval_transform, size=train_config.image_size))
  inputs = batched(preprocess, (images,), config.batch_size)

  def logits_of(predict_fn):
    return batched(functools.partial(predict, predict_fn), (inputs,), config.batch_size)

  target_fn, _ = _predict_fn(target_dir / "model")
  logits = logits_of(target_fn)
  report = {"target_workdir": str(target_dir), "num_members": int(is_member.sum()),
            "num_nonmembers": int((~is_member).sum()),
            "member_accuracy": float(np.mean(logits[is_member].argmax(-1) == labels[is_member])),
            "nonmember_accuracy": float(np.mean(logits[~is_member].argmax(-1) == labels[~is_member]))}
  fprs = tuple(config.fprs)
  scores = {"loss": np.asarray(loss_scores(logits, labels)),
            "confidence": np.asarray(confidence_scores(logits, labels))}
  curves = {name: attack_metrics(s[is_member], s[~is_member], fprs) for name, s in scores.items()}
  yeom_threshold = float(np.mean(scores["loss"][is_member]))  # minus the mean training loss
  report["loss_attack"] = {**curves["loss"][0], "yeom_threshold_balanced_accuracy": float(
      threshold_balanced_accuracy(scores["loss"][is_member], scores["loss"][~is_member], yeom_threshold))}
  report["confidence_attack"] = curves["confidence"][0]

  if config.lira.num_shadows:
    public = data.load_split(train_config.dataset, "public")
    size = config.lira.shadow_train_size or sizes["members"]
    if size >= public.num_examples:
      logging.warning("The public split has %d examples, not more than a shadow's %d: shadows train on all of it.",
                      public.num_examples, size)
      size = public.num_examples
    shadow_root = pathlib.Path(config.lira.shadow_workdir or workdir / "shadows")
    shadow_train_config = train_config if shadow_config is None else shadow_config
    shadow_phi = []
    for index in range(config.lira.num_shadows):
      path = _train_shadow(shadow_train_config, public, index, size, config.seed, shadow_root / f"shadow_{index}")
      shadow_fn, _ = _predict_fn(path)
      shadow_phi.append(np.asarray(logit_scaled_confidence(logits_of(shadow_fn), labels)))
    global_variance = bool(config.lira.global_variance) or config.lira.num_shadows < 2
    scores["lira_offline"] = np.asarray(lira_offline_scores(
        logit_scaled_confidence(logits, labels), np.stack(shadow_phi), global_variance=global_variance))
    curves["lira_offline"] = attack_metrics(scores["lira_offline"][is_member], scores["lira_offline"][~is_member],
                                            fprs)
    report["lira_offline"] = {**curves["lira_offline"][0], "num_shadows": config.lira.num_shadows,
                              "shadow_train_size": size, "global_variance": global_variance,
                              "shadow_label_smoothing": float(shadow_train_config.label_smoothing),
                              "shadow_defense": shadow_train_config.defense.name}

  dtc = None
  if config.dtc.max_examples:
    d = config.dtc
    picks = {g: np.flatnonzero(is_member == (g == "members")) for g in ("members", "nonmembers")}
    picks = {g: idx[_subsample(len(idx), d.max_examples, rng)] for g, idx in picks.items()}
    chosen = np.concatenate([picks["members"], picks["nonmembers"]])
    search = functools.partial(distance_to_confident, target_fn, threshold=d.threshold, norm=d.norm,
                               max_radius=d.max_radius, num_bisections=d.num_bisections, num_steps=d.num_steps,
                               step_size=d.step_size)
    distances, _ = batched(search, (inputs[chosen], labels[chosen]), d.batch_size)
    split_at = len(picks["members"])
    dtc = {"members": distances[:split_at], "nonmembers": distances[split_at:], "norm": d.norm,
           "threshold": d.threshold}
    curves["dtc"] = attack_metrics(dtc["members"], dtc["nonmembers"], fprs)
    report["dtc"] = {**curves["dtc"][0], "norm": d.norm, "threshold": d.threshold,
                     "members": distribution_summary(dtc["members"]),
                     "nonmembers": distribution_summary(dtc["nonmembers"])}
    scores["dtc_members"], scores["dtc_nonmembers"] = dtc["members"], dtc["nonmembers"]

  workdir.mkdir(parents=True, exist_ok=True)
  files.atomic_write(workdir / "scores.npz",
                     lambda f: np.savez(f, is_member=is_member, labels=labels, **scores))
  _plot({name: curve for name, curve in curves.items()}, dtc, workdir)
  files.atomic_write_text(workdir / "report.json", json.dumps(report, indent=2))
  return report


def main(argv):
  cli.start(argv)
  report = evaluate_membership(flags.FLAGS.config, flags.FLAGS.workdir)
  for name in ("loss_attack", "confidence_attack", "lira_offline", "dtc"):
    if name in report:
      numbers = {k: round(v, 4) for k, v in report[name].items() if isinstance(v, float)}
      logging.info("%s: %s", name, numbers)


if __name__ == "__main__":
  config_flags.DEFINE_config_file("config", None, "Membership config (configs/membership_*.py[:smoke]).",
                                  lock_config=True)
  flags.DEFINE_string("workdir", None, "Directory for the report, scores, figures and shadow models.")
  flags.mark_flags_as_required(["config", "workdir"])
  cli.run(main)
