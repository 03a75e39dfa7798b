"""The vanishing-gradient picture: ‖∂h_T/∂x_{T−k}‖ vs time lag k for a tanh RNN, a GRU and an
LSTM at their standard initialisation (`genfm.foundations.rnn`), averaged over seeds and rows.

  python -m genfm.experiments.rnn_gradients --workdir=runs/rnn_gradients [--steps 100 --seeds 5]

For the Elman RNN ∂h_T/∂h_{T−k} = Π_{s} diag(1 − h_s²) W_h, a product of k matrices whose norm
shrinks geometrically once tanh saturates (Bengio, Simard & Frasconi 1994; Pascanu et al.,
arXiv:1211.5063, Sec. 2). The LSTM's cell path ∂c_T/∂c_{T−k} = Π f_s is additive in c
(Hochreiter & Schmidhuber 1997) and decays only as fast as the forget gates close; with
b_f = 1 (Jozefowicz et al. 2015) f ≈ σ(1) ≈ 0.73 at init. The "LSTM b_f = 0" curve shows what
the bias buys. Inputs x ~ N(0, I); the norm is the Frobenius norm of the D × I Jacobian, one
row at a time (vmap of jacrev), averaged over rows and seeds, plotted on a log axis.
Measured (defaults: T = 100, I = 32, D = 64, 5 seeds × 8 rows; 1.5 min wall, 16 CPU-s on the
loaded 2-core machine): fitted factor per step tanh RNN 0.628, GRU 0.597, LSTM (b_f = 1) 0.766,
LSTM (b_f = 0) 0.575; at k = 99 the LSTM (b_f = 1) keeps 3.6e-12 of a gradient that starts at
1.65, the others underflow fp32 to 0 by k ≈ 81–97. Without the forget bias the LSTM vanishes as
fast as the tanh RNN; the GRU, whose keep gate z also starts at σ(0) = 1/2, too.
Writes `rnn_gradients.png` and `rnn_gradients.json` (per curve: mean norms for k = 0..T−1 and
the fitted per-step decay factor exp(slope of log norm) over the lags k ≥ 1 whose norm is above
fp32's underflow, 1e-30).
"""

from __future__ import annotations

import argparse
import functools
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from genfm.foundations import rnn

CURVES = {"tanh RNN": ("rnn", None), "GRU": ("gru", None), "LSTM (b_f = 1)": ("lstm", 1.0),
          "LSTM (b_f = 0)": ("lstm", 0.0)}


def _cell(kind: str, forget_bias, I: int, D: int, seed: int):
  rngs = nnx.Rngs(seed)
  if kind == "lstm":
    return rnn.LSTMCell(I, D, forget_bias=forget_bias, rngs=rngs)
  return rnn.make_cell(kind, I, D, rngs=rngs)


@functools.partial(jax.jit, static_argnums=0)
def _jacobian_norms(graphdef, state, x_BTI: jax.Array) -> jax.Array:
  def last_output(x_TI):
    return rnn.scan(nnx.merge(graphdef, state), x_TI[None])[1][0, -1]   # h_T [D]

  jac_BDTI = jax.vmap(jax.jacrev(last_output))(x_BTI)
  norms_BT = jnp.sqrt(jnp.sum(jac_BDTI ** 2, axis=(1, 3)))
  return jnp.mean(norms_BT, axis=0)[::-1]       # index k = T−1−t: the lag from the last step


def jacobian_norms(cell, x_BTI: jax.Array) -> jax.Array:
  """[T] mean over rows of ‖∂h_T/∂x_{T−k}‖_F for k = 0..T−1 (h_T: the output at the last step);
  jitted per cell structure, so seeds of one kind share one compilation."""
  graphdef, state = nnx.split(cell)
  return _jacobian_norms(graphdef, state, x_BTI)


def gradient_decay(*, steps: int = 100, in_features: int = 32, hidden: int = 64,
                   batch: int = 8, seeds: int = 5) -> dict:
  """{curve name: {"norms": [T] mean over seeds, "decay_per_step": fitted factor}}."""
  out = {}
  for name, (kind, bf) in CURVES.items():
    runs = []
    for seed in range(seeds):
      cell = _cell(kind, bf, in_features, hidden, seed)
      x = jax.random.normal(jax.random.key(1000 + seed), (batch, steps, in_features))
      runs.append(np.asarray(jacobian_norms(cell, x)))
    norms = np.mean(runs, axis=0)
    # Fit log ‖·‖ over lags k ≥ 1 whose norm is above 1e-30: fp32 products underflow to 0
    # (denormals start at 1e-38) after ~100 steps of a ×0.5 decay, and log 0 is no data.
    k = np.arange(1, steps)
    ok = norms[1:] > 1e-30
    if ok.sum() >= 2:
      slope = np.polyfit(k[ok], np.log(norms[1:][ok]), 1)[0]
    else:
      slope = float(np.log(max(norms[-1], 1e-38) / norms[0]) / max(steps - 1, 1))
    out[name] = {"norms": norms.tolist(), "decay_per_step": float(np.exp(slope))}
  return out


def plot(result: dict, path: str, title: str) -> None:
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, ax = plt.subplots(figsize=(7, 4.5))
  for name, r in result.items():
    ax.semilogy(np.arange(len(r["norms"])), r["norms"],
                label=f"{name}  (×{r['decay_per_step']:.3f} per step)")
  ax.set(title=title, xlabel="time lag k", ylabel="‖∂h_T / ∂x_{T−k}‖ (mean)")
  ax.legend()
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def main(argv=None) -> dict:
  p = argparse.ArgumentParser(description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--workdir", required=True, help="where the PNG and JSON are written")
  p.add_argument("--steps", type=int, default=100, help="sequence length T")
  p.add_argument("--in_features", type=int, default=32)
  p.add_argument("--hidden", type=int, default=64)
  p.add_argument("--batch", type=int, default=8, help="rows per seed")
  p.add_argument("--seeds", type=int, default=5)
  args = p.parse_args(argv)
  for name in ("steps", "in_features", "hidden", "batch", "seeds"):
    if getattr(args, name) < 1:
      p.error(f"--{name} must be ≥ 1, got {getattr(args, name)}")
  os.makedirs(args.workdir, exist_ok=True)
  result = gradient_decay(steps=args.steps, in_features=args.in_features, hidden=args.hidden,
                          batch=args.batch, seeds=args.seeds)
  settings = {k: getattr(args, k) for k in ("steps", "in_features", "hidden", "batch", "seeds")}
  with open(os.path.join(args.workdir, "rnn_gradients.json"), "w") as f:
    json.dump({"settings": settings, "curves": result}, f, indent=1)
  plot(result, os.path.join(args.workdir, "rnn_gradients.png"),
       f"Gradient vs lag at init: I={args.in_features}, D={args.hidden}, "
       f"{args.seeds} seeds × {args.batch} rows")
  for name, r in result.items():
    print(f"{name:16s} decay/step {r['decay_per_step']:.4f}  ‖·‖ at k=0 {r['norms'][0]:.3e}  "
          f"k={args.steps - 1} {r['norms'][-1]:.3e}")
  return result


if __name__ == "__main__":
  main()
