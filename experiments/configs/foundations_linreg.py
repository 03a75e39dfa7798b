"""Linear regression by minibatch SGD through the launcher, against closed-form least squares.

Synthetic, embedded, fixed seed (experiments/tasks/regression.py): x ~ N(0, I_D),
y = x w_true + b_true + 0.1 ε. The loop trains ŷ = x w + b (genfm.foundations.linear_regression)
on the MSE with plain SGD (η = 0.1, cosine-decayed to 0, which shrinks the minibatch-noise
floor); eval compares θ = [w; b] with θ* = argmin ‖X̃θ − y‖² (the normal equations), and test MSE
with θ*'s test MSE (≈ σ² = 0.01, the noise floor).

Command:  python -m genfm.experiments.run --config=experiments/configs/foundations_linreg.py --workdir=runs/linreg
Hardware: CPU, 2 cores.   Run time: 25 s session (10 s CPU) on the loaded machine (load ~17).
Expect:   ‖θ − θ*‖₂ (`theta_dist`) <= 1e-3 and |test MSE / closed-form test MSE − 1|
          (`test_mse_rel_gap`) <= 0.01; measured 3.8e-4 and +2.2e-5 (test MSE 0.009843).
          `:smoke` (1,000 points, 300 steps, seconds): the same two bars; measured 3.3e-4 and
          −4.0e-4 (test MSE 0.010327 vs closed form 0.010331).
"""

import ml_collections

from genfm.experiments.configs.common import base_config, check_variant, set_schedule


def get_config(variant: str = "") -> ml_collections.ConfigDict:
  check_variant("foundations_linreg", variant)
  c = base_config("foundations_linreg", task="regression", dataset="linear_synthetic")
  c.regression = ml_collections.ConfigDict(
      {"num_features": 16, "num_train": 10_000, "num_test": 10_000, "noise_std": 0.1,
       "data_seed": 0})
  c.optimizer, c.learning_rate, c.weight_decay = "sgd", 0.1, 0.0   # plain SGD, cosine decay to 0
  c.batch_size, c.eval_batch_size = 100, 1000
  set_schedule(c, 2000, log=200, eval_=1000, checkpoint=1000)  # 20 epochs of 10k at batch 100
  if variant == "smoke":
    c.regression.num_train, c.regression.num_test = 1000, 1000
    set_schedule(c, 300, log=50, eval_=300, checkpoint=300)    # 30 epochs of 1k at batch 100
  return c
