"""Figures for the foundations curriculum, written as PNGs into a directory.

  python -m genfm.foundations.figures OUT_DIR [--only race,lr,init,schedules,residual,filters] [--quick]

race        optimizers racing on Rosenbrock (Rosenbrock 1960) and a saddle, same start, same steps
lr          learning-rate sensitivity: loss after N steps on Rosenbrock vs η, per optimizer
init        activation variance through 20 layers, matched vs mismatched init (init.py)
schedules   step / exponential / cosine / warmup+cosine (schedules.py)
residual    per-layer gradient norm, plain vs residual net (residual.py)
filters     first-layer 3×3 filters of a tiny CNN (conv.py's Conv2D) trained on sklearn digits
"""

import argparse
import os
from typing import Callable

import jax
import jax.numpy as jnp
import matplotlib
import optax
from flax import nnx

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top,wrong-import-position

from genfm.foundations import conv as conv_lib  # pylint: disable=wrong-import-position
from genfm.foundations import init as init_lib  # pylint: disable=wrong-import-position
from genfm.foundations import optimizers as opt  # pylint: disable=wrong-import-position
from genfm.foundations import residual as residual_lib  # pylint: disable=wrong-import-position
from genfm.foundations import schedules as sch  # pylint: disable=wrong-import-position

FIGURES = ("race", "lr", "init", "schedules", "residual", "filters")


def rosenbrock(p: jax.Array) -> jax.Array:
  return (1.0 - p[0]) ** 2 + 100.0 * (p[1] - p[0] ** 2) ** 2  # minimum 0 at (1, 1)


def saddle(p: jax.Array) -> jax.Array:
  # Saddle at the origin; minima at (0, ±√2) where the loss is −1.
  return p[0] ** 2 - p[1] ** 2 + 0.25 * p[1] ** 4


# Per-optimizer learning rates for the race (hand-tuned so each makes visible progress).
RACE_LR = {"sgd": 1e-3, "momentum": 1e-3, "nesterov": 1e-3, "adagrad": 0.3, "rmsprop": 1e-2,
           "adam": 0.05, "adamw": 0.05}


def run_optimizer(tx, loss_fn: Callable, start: jax.Array, num_steps: int) -> jax.Array:
  """Positions [num_steps + 1, 2] of `tx` minimising `loss_fn` from `start`."""

  def step(carry, _):
    p, state = carry
    updates, state = tx.update(jax.grad(loss_fn)(p), state, p)
    p = p + updates
    return (p, state), p

  _, path = jax.lax.scan(step, (start, tx.init(start)), None, length=num_steps)
  return jnp.concatenate([start[None], path])


def _contour(ax, loss_fn, xlim, ylim, levels):
  xs, ys = jnp.linspace(*xlim, 200), jnp.linspace(*ylim, 200)
  gx, gy = jnp.meshgrid(xs, ys)
  z = jax.vmap(loss_fn)(jnp.stack([gx.ravel(), gy.ravel()], axis=1)).reshape(gx.shape)
  ax.contour(gx, gy, z, levels=levels, colors="0.75", linewidths=0.6)


def race(out_dir: str, num_steps: int) -> str:
  fig, axes = plt.subplots(1, 2, figsize=(12, 5))
  setups = [("Rosenbrock", rosenbrock, jnp.array([-1.5, 2.0]), (-2, 2), (-1, 3),
             jnp.logspace(-1, 3, 15)),
            ("saddle x² − y² + y⁴/4", saddle, jnp.array([1.0, 1e-3]), (-1.2, 1.2), (-2, 2), 20)]
  for ax, (title, fn, start, xlim, ylim, levels) in zip(axes, setups):
    _contour(ax, fn, xlim, ylim, levels)
    for name, lr in RACE_LR.items():
      kwargs = {"weight_decay": 0.1} if name == "adamw" else {}
      path = run_optimizer(opt.get_optimizer(name, learning_rate=lr, **kwargs), fn, start,
                           num_steps)
      ax.plot(path[:, 0], path[:, 1], lw=1.2, label=f"{name} (η={lr:g}) → {float(fn(path[-1])):.2g}")
    ax.plot(*start, "ko")
    ax.set(title=f"{title}, {num_steps} steps", xlim=xlim, ylim=ylim, xlabel="x", ylabel="y")
    ax.legend(fontsize=7, loc="lower left")
  return _save(fig, out_dir, "optimizer_race.png")


def lr_sensitivity(out_dir: str, num_steps: int) -> str:
  lrs = jnp.logspace(-5, 0, 21)
  fig, ax = plt.subplots(figsize=(7, 5))
  start = jnp.array([-1.5, 2.0])
  for name in RACE_LR:
    # vmap over η: one compiled scan per optimizer instead of one per learning rate.
    final_fn = jax.jit(jax.vmap(lambda lr, name=name: rosenbrock(
        run_optimizer(opt.get_optimizer(name, learning_rate=lr), rosenbrock, start,
                      num_steps)[-1])))
    final = final_fn(lrs)
    final = jnp.where(jnp.isfinite(final) & (final < 1e4), final, 1e4)  # diverged: clip for plot
    ax.loglog(lrs, final, marker="o", ms=3, label=name)
  ax.set(title=f"Rosenbrock loss after {num_steps} steps vs learning rate (1e4 = diverged)",
         xlabel="learning rate η", ylabel="final loss")
  ax.legend(fontsize=8)
  return _save(fig, out_dir, "lr_sensitivity.png")


def init_variance(out_dir: str) -> str:
  fig, ax = plt.subplots(figsize=(7, 5))
  for init, act in [("he_normal", "relu"), ("xavier_normal", "linear"),
                    ("xavier_normal", "relu"), ("he_normal", "linear")]:
    v = init_lib.activation_variances(jax.random.key(0), init, act, depth=20, width=512)
    ax.semilogy(range(1, 21), v / v[0], marker="o", ms=3, label=f"{init} + {act}")
  ax.axhspan(0.5, 2.0, color="0.9", label="within ×2")
  ax.set(title="Pre-activation variance through 20 layers (width 512)", xlabel="layer",
         ylabel="Var[z_l] / Var[z_1]")
  ax.legend(fontsize=8)
  return _save(fig, out_dir, "init_variance.png")


def schedules(out_dir: str) -> str:
  t = jnp.arange(1000)
  fig, ax = plt.subplots(figsize=(7, 4))
  for label, s in [("step (×0.5 / 250)", sch.step_decay(1.0, 250, 0.5)),
                   ("exponential (×0.5 / 250)", sch.exponential_decay(1.0, 250, 0.5)),
                   ("cosine → 0.05", sch.cosine_decay(1.0, 1000, 0.05)),
                   ("warmup 100 + cosine", sch.warmup_cosine(0.0, 1.0, 100, 1000))]:
    ax.plot(t, s(t), label=label)
  ax.set(title="Learning-rate schedules", xlabel="step", ylabel="η / η₀")
  ax.legend(fontsize=8)
  return _save(fig, out_dir, "schedules.png")


def residual_grads(out_dir: str) -> str:
  fig, ax = plt.subplots(figsize=(7, 4.5))
  norms = residual_lib.compare(width=64, depth=20, activation="sigmoid")
  for name, n in norms.items():
    ax.semilogy(range(1, 21), n, marker="o", ms=3, label=name)
  ax.set(title="‖∂loss/∂W_l‖ per layer, 20 sigmoid layers, same weights", xlabel="layer l",
         ylabel="gradient norm")
  ax.legend()
  return _save(fig, out_dir, "residual_grad_norms.png")


class DigitsCNN(nnx.Module):
  """conv 3×3 (8 filters) → ReLU → 2×2 max-pool → linear; [B, 8, 8, 1] -> logits [B, 10]."""

  def __init__(self, num_filters: int = 8, *, rngs: nnx.Rngs):
    self.conv = conv_lib.Conv2D(1, num_filters, 3, padding="SAME", rngs=rngs)
    self.out = nnx.Linear(4 * 4 * num_filters, 10, rngs=rngs)

  def __call__(self, x_BHWC: jax.Array) -> jax.Array:
    h = conv_lib.max_pool2d(jax.nn.relu(self.conv(x_BHWC)), 2)  # [B, 4, 4, F]
    return self.out(h.reshape(h.shape[0], -1))


def train_digits_cnn(num_steps: int, seed: int = 0) -> tuple[DigitsCNN, float]:
  """Full-batch Adam on all 1797 sklearn digits (embedded, offline); returns (model, train acc)."""
  from sklearn.datasets import load_digits  # pylint: disable=g-import-not-at-top

  data = load_digits()
  x_BHWC = jnp.asarray(data.images[..., None] / 16.0, jnp.float32)
  y_B = jnp.asarray(data.target, jnp.int32)
  graphdef, params = nnx.split(DigitsCNN(rngs=nnx.Rngs(seed)))
  tx = optax.adam(1e-2)

  def loss_fn(p):
    logits = nnx.merge(graphdef, p)(x_BHWC)
    return optax.softmax_cross_entropy_with_integer_labels(logits, y_B).mean()

  def step(carry, _):
    p, s = carry
    updates, s = tx.update(jax.grad(loss_fn)(p), s, p)
    return (optax.apply_updates(p, updates), s), None

  (params, _), _ = jax.jit(lambda c: jax.lax.scan(step, c, None, length=num_steps))(
      (params, tx.init(params)))
  model = nnx.merge(graphdef, params)
  return model, float(jnp.mean(jnp.argmax(model(x_BHWC), -1) == y_B))


def learned_filters(out_dir: str, num_steps: int) -> str:
  model, acc = train_digits_cnn(num_steps)
  k_HWIO = model.conv.kernel_HWIO[...]
  fig, axes = plt.subplots(1, k_HWIO.shape[-1], figsize=(2 * k_HWIO.shape[-1], 2.4))
  lim = float(jnp.max(jnp.abs(k_HWIO)))
  for f, ax in enumerate(axes):
    ax.imshow(k_HWIO[:, :, 0, f], cmap="RdBu_r", vmin=-lim, vmax=lim)
    ax.set(xticks=[], yticks=[], title=f"filter {f}")
  fig.suptitle(f"First-layer 3×3 filters after {num_steps} steps on digits (train acc {acc:.3f})")
  return _save(fig, out_dir, "learned_filters.png")


def _save(fig, out_dir: str, name: str) -> str:
  path = os.path.join(out_dir, name)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)
  return path


def main(argv=None) -> list[str]:
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("out_dir")
  parser.add_argument("--only", default=",".join(FIGURES),
                      help=f"comma-separated subset of {', '.join(FIGURES)}")
  parser.add_argument("--quick", action="store_true", help="few steps (for tests)")
  args = parser.parse_args(argv)
  chosen = [f for f in args.only.split(",") if f]
  unknown = sorted(set(chosen) - set(FIGURES))
  if unknown:
    parser.error(f"unknown figures {unknown}; valid choices: {', '.join(FIGURES)}")
  os.makedirs(args.out_dir, exist_ok=True)
  steps = 20 if args.quick else 500
  makers = {"race": lambda: race(args.out_dir, steps),
            "lr": lambda: lr_sensitivity(args.out_dir, steps),
            "init": lambda: init_variance(args.out_dir), "schedules": lambda: schedules(args.out_dir),
            "residual": lambda: residual_grads(args.out_dir),
            "filters": lambda: learned_filters(args.out_dir, steps)}
  paths = [makers[f]() for f in chosen]
  for p in paths:
    print(p)
  return paths


if __name__ == "__main__":
  main()
