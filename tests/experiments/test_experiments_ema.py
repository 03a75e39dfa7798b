"""The parameter EMA of `experiments/ema.py` and the loop that keeps it: the update equals the
closed-form weighted sum of the iterates, the warm-up follows (1 + k)/(10 + k), the loop's
`ema_params` equal the recursion replayed by hand on the parameters the same steps produced,
a finished run reads back its EMA weights, and bad decays are config errors."""

import json

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from genfm.experiments import data
from genfm.experiments import train
from genfm.experiments.configs import fashion_mlp
from genfm.experiments.ema import ema_decay, ema_update, warmed_decay
from genfm.experiments.errors import CheckpointError, ConfigError
from genfm.experiments.tasks import get_task


def test_warmup_follows_tf_num_updates_then_caps_at_the_decay():
  k = jnp.arange(0, 2000)
  d = np.asarray(warmed_decay(0.99, k))
  np.testing.assert_allclose(d[:5], [(1 + i) / (10 + i) for i in range(5)], rtol=1e-6)
  assert d[0] == pytest.approx(0.1)                 # the first update keeps 90 % of θ_1
  # (1 + k)/(10 + k) ≥ 0.99 from k = 890 on: the cap holds from there.
  assert np.all(d[890:] == np.float32(0.99)) and np.all(d[:890] < np.float32(0.99))


def test_update_equals_the_closed_form_weighted_sum():
  """After warm-up (constant d): ē_n = dⁿ ē_0 + Σ_{k=1..n} (1 − d) d^{n−k} θ_k, in float64."""
  d, n, start = 0.9, 12, 10_000                      # start ≫ 10: d_k = d for every update
  keys = jax.random.split(jax.random.key(0), n + 1)
  e0 = {"w": jax.random.normal(keys[0], (4, 3)), "b": jax.random.normal(keys[0], (3,))}
  thetas = [{"w": jax.random.normal(k, (4, 3)), "b": jax.random.normal(k, (3,)) + 2}
            for k in keys[1:]]
  e = e0
  for i, th in enumerate(thetas):
    e = ema_update(e, th, d, start + i)
  for name in ("w", "b"):
    want = d ** n * np.asarray(e0[name], np.float64) + sum(
        (1 - d) * d ** (n - k) * np.asarray(thetas[k - 1][name], np.float64)
        for k in range(1, n + 1))
    np.testing.assert_allclose(np.asarray(e[name]), want, rtol=1e-5, atol=1e-6)


def test_constant_parameters_are_a_fixed_point():
  p = {"w": jnp.linspace(-3.0, 3.0, 7)}
  e = p
  for k in range(50):
    e = ema_update(e, p, 0.999, k)
  chex.assert_trees_all_equal(e, p)


@pytest.mark.parametrize("bad", [1.0, -0.1, 1.5])
def test_bad_decay_is_a_config_error(bad):
  c = fashion_mlp.get_config("smoke")
  c.ema_decay = bad
  with pytest.raises(ConfigError, match="ema_decay must be 0"):
    ema_decay(c)


def test_default_configs_keep_no_average():
  c = fashion_mlp.get_config("smoke")
  task = get_task(c)
  assert c.ema_decay == 0.0
  assert "ema_params" not in train.init_state(task, c)[1]


def test_loop_average_equals_the_recursion_replayed_on_its_own_iterates():
  """Five jitted steps of the launcher's step function with ema_decay = 0.2: the state's
  `ema_params` equal ē_{k+1} = d_k ē_k + (1 − d_k) θ_{k+1} replayed in float64 on the parameters
  recorded after each step; d_k = 0.1, 0.18 (warm-up), then the cap 0.2."""
  c = fashion_mlp.get_config("smoke")
  c.ema_decay = 0.2
  task = get_task(c)
  models, state = train.init_state(task, c)
  step_fn = jax.jit(train.make_train_step(task, c, models))
  it = data.make_iterator(task.train_source(), seed=c.seed, shuffle=True, batch_size=32,
                          transform=task.train_transform())
  to64 = lambda tree: jax.tree.map(lambda x: np.asarray(x, np.float64), tree)
  ema_of = lambda s: s["ema_params"]["model"]
  ema = to64(train.params_of(state))
  chex.assert_trees_all_equal(ema_of(state), train.params_of(state))   # ē_0 = θ_0
  for k in range(5):
    state, _ = step_fn(state, next(it))
    d = min(0.2, (1 + k) / (10 + k))
    ema = jax.tree.map(lambda e, p: d * e + (1 - d) * p, ema, to64(train.params_of(state)))
  chex.assert_trees_all_close(to64(ema_of(state)), ema, rtol=1e-5, atol=1e-7)
  # The average lags the iterate: it is not the parameters themselves.
  gap = max(float(np.max(np.abs(a - b))) for a, b in zip(
      jax.tree.leaves(to64(ema_of(state))), jax.tree.leaves(to64(train.params_of(state)))))
  assert gap > 1e-4


def test_launcher_evaluates_the_average_and_reads_it_back(tmp_path, launch):
  """An EMA run reports `raw_*` beside the EMA metrics, writes both summaries, and
  `restore_eval_model` returns the EMA weights (the ones the evals scored)."""
  proc = launch("fashion_mlp.py:smoke", tmp_path, "--config.ema_decay=0.9",
                "--config.num_train_steps=60", "--config.eval_every_steps=60",
                "--config.checkpoint_every_steps=60", timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  s = json.load(open(tmp_path / "summary.json"))
  assert {"test_loss", "raw_test_loss", "test_accuracy", "raw_test_accuracy"} <= set(s), s
  assert s["test_loss"] != s["raw_test_loss"]              # two different weight sets scored
  c = fashion_mlp.get_config("smoke")
  c.update({"ema_decay": 0.9, "num_train_steps": 60, "eval_every_steps": 60,
            "checkpoint_every_steps": 60})
  task = get_task(c)
  model, step = train.restore_eval_model(task, c, str(tmp_path))
  assert step == 60
  ckpt = train.Checkpointer(str(tmp_path))
  try:
    st, _ = ckpt.restore_latest(train.init_state(task, c)[1])
  finally:
    ckpt.close()
  chex.assert_trees_all_equal(nnx.state(model, nnx.Param), st["ema_params"]["model"])


def test_workdir_recorded_before_ema_existed_resumes_only_without_it(tmp_path):
  """A config.json written before `ema_decay` existed resumes with the default 0 (its own
  behaviour) and is refused with an EMA, which its checkpoints do not hold."""
  c = fashion_mlp.get_config("smoke")
  train.check_workdir(c, str(tmp_path))
  recorded = json.load(open(tmp_path / "config.json"))
  del recorded["ema_decay"]
  json.dump(recorded, open(tmp_path / "config.json", "w"))
  train.check_workdir(c, str(tmp_path))                        # same run: accepted
  json.dump(recorded, open(tmp_path / "config.json", "w"))
  c.ema_decay = 0.999
  with pytest.raises(CheckpointError, match="ema_decay: 0.0 → 0.999"):
    train.check_workdir(c, str(tmp_path))


def test_raw_and_average_metrics_share_a_panel_of_the_curves():
  from genfm.experiments.writer import metric_base
  assert {metric_base(n) for n in ("train_loss", "test_loss", "raw_test_loss")} == {"loss"}
  assert metric_base("raw_fd") == metric_base("fd") == "fd"
  assert metric_base("raw_fd_floor") == metric_base("fd_floor") == "fd_floor"
  assert metric_base("train_grad_norm") == "grad_norm"
