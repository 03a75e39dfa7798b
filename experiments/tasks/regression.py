"""Linear regression through the shared training loop, checked against closed-form least squares.

Data (embedded, offline, fixed seed): x ~ N(0, I_D), y = x w_true + b_true + σ ε, ε ~ N(0, 1).
Model ŷ = x w + b (`genfm.foundations.linear_regression.predict`), loss the mean squared error
L = (1/B) Σ_i (ŷ_i − y_i)²; the loop's optimizer minimises it by minibatch gradient descent.
The minimiser on the training set solves the normal equations X̃ᵀX̃ θ* = X̃ᵀy, X̃ = [x, 1]
(ESL §3.2, eq. (3.6)), computed by `linear_regression.fit_closed_form` (SVD least squares).

Eval: `test_mse` (masked sums, the loop's contract) and, in `after_eval`, the parameter distance
‖θ − θ*‖₂ to the closed-form solution, the closed-form solution's own test MSE and the relative
gap (MSE_θ − MSE_θ*) / MSE_θ*. With σ = 0.1 both MSEs sit near the noise floor σ² = 0.01.
"""

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from genfm.experiments.data import ArraySource, DatasetInfo
from genfm.experiments.errors import ConfigError, unknown_choice
from genfm.experiments.tasks.base import Batch, Task
from genfm.foundations import linear_regression as linreg

DATASETS = ("linear_synthetic",)
_INT_KEYS = ("num_features", "num_train", "num_test", "data_seed")


def make_linear_data(num_features: int, num_train: int, num_test: int, noise_std: float,
                     seed: int) -> dict:
  """Fixed-seed set: {"w_true" [D], "b_true" [], "train"/"test": {"x" [N, D], "y" [N]}}."""
  rng = np.random.default_rng(seed)
  w_true_D = rng.normal(size=num_features).astype(np.float32)
  b_true = np.float32(rng.normal())
  out = {"w_true": w_true_D, "b_true": b_true}
  for split, n in (("train", num_train), ("test", num_test)):
    x_ND = rng.normal(size=(n, num_features)).astype(np.float32)
    y_N = x_ND @ w_true_D + b_true + noise_std * rng.normal(size=n).astype(np.float32)
    out[split] = {"x": x_ND, "y": y_N.astype(np.float32)}
  return out


class LinearModel(nnx.Module):
  """ŷ = x w + b with w [D], b [] — the parameters of `linear_regression.LinearParams`, held as
  `nnx.Param`s. Zero init, like `linear_regression.fit_gradient_descent` (the loss is convex)."""

  def __init__(self, num_features: int, *, rngs: nnx.Rngs):
    del rngs                                  # deterministic init; kept for the Task contract
    self.w_D = nnx.Param(jnp.zeros(num_features))
    self.b = nnx.Param(jnp.zeros(()))

  @property
  def params(self) -> linreg.LinearParams:
    return linreg.LinearParams(self.w_D[...], self.b[...])

  def __call__(self, x_BD: jax.Array) -> jax.Array:
    return linreg.predict(self.params, x_BD)  # [B]


class RegressionTask(Task):
  """`config.regression` synthetic set → `LinearModel` → MSE; eval against the closed form."""

  def __init__(self, config):
    super().__init__(config)
    if config.dataset not in DATASETS:
      raise unknown_choice("config.dataset for the regression task", config.dataset, DATASETS)
    r = config.regression
    for k in _INT_KEYS:
      if not isinstance(r[k], int) or r[k] < (0 if k == "data_seed" else 1):
        raise ConfigError(f"config.regression.{k} must be a positive integer, got {r[k]!r}")
    if not r.noise_std >= 0:
      raise ConfigError(f"config.regression.noise_std must be >= 0, got {r.noise_std!r}")
    d = make_linear_data(r.num_features, r.num_train, r.num_test, r.noise_std, r.data_seed)
    self.data = d
    self._sources = {}
    for split in ("train", "test"):
      arrays = d[split]
      info = DatasetInfo(name=config.dataset, split=split, num_examples=len(arrays["y"]),
                         features={"x": ((r.num_features,), np.dtype(np.float32)),
                                   "y": ((), np.dtype(np.float32))})
      self._sources[split] = ArraySource(arrays, info)
    x_tr, y_tr = jnp.asarray(d["train"]["x"]), jnp.asarray(d["train"]["y"])
    self.closed_form = linreg.fit_closed_form(x_tr, y_tr)          # θ* on the training set
    self.closed_form_test_mse = float(linreg.mse_loss(
        self.closed_form, jnp.asarray(d["test"]["x"]), jnp.asarray(d["test"]["y"])))

  def train_source(self):
    return self._sources["train"]

  def eval_sources(self):
    return {"test": self._sources["test"]}

  def build_model(self, rngs: nnx.Rngs) -> nnx.Module:
    return LinearModel(self.config.regression.num_features, rngs=rngs)

  def loss(self, model, batch: Batch, key: jax.Array):
    del key
    loss = linreg.mse_loss(model.params, batch["x"], batch["y"])   # (1/B) Σ (ŷ − y)²
    return loss, {}

  def eval_metrics(self, model, batch: Batch):
    mask_B = batch["mask"]
    se_B = (model(batch["x"]) - batch["y"]) ** 2
    return {"mse": (se_B * mask_B).sum(), "count": mask_B.sum()}

  def after_eval(self, model, workdir: str, step: int) -> dict[str, float]:
    del workdir, step
    p, ref = model.params, self.closed_form
    dw_D = p.w_D - ref.w_D
    theta_dist = jnp.sqrt(jnp.sum(dw_D**2) + (p.b - ref.b) ** 2)   # ‖θ − θ*‖₂, θ = [w; b]
    test_mse = float(linreg.mse_loss(p, jnp.asarray(self.data["test"]["x"]),
                                     jnp.asarray(self.data["test"]["y"])))
    return {"w_dist": float(jnp.linalg.norm(dw_D)), "theta_dist": float(theta_dist),
            "closed_form_test_mse": self.closed_form_test_mse,
            "test_mse_rel_gap": (test_mse - self.closed_form_test_mse) / self.closed_form_test_mse}
