"""Training loop v2, in process: trainable / frozen parts, one optimizer per model, a task's own
step, metrics under each model's name, init_from by path, older checkpoints still resume."""

import chex
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx

from genfm.experiments import bench, data, init_from, train
from genfm.experiments.checkpoint import Checkpointer
from genfm.experiments.configs import fashion_mlp, toy2d_gan
from genfm.experiments.errors import ConfigError
from genfm.experiments.models import ModelSet, path_str
from genfm.experiments.tasks import get_task
from genfm.experiments.tasks.base import Task
from genfm.foundations import gan
from genfm.foundations.mlp import MLP
from genfm.transformers import gpt, sampling


def _config(**overrides):
  c = fashion_mlp.get_config("smoke")
  c.model.hidden = (32, 16)              # layers/0 [64, 32], layers/1 [32, 16], head [16, 10]
  c.update(overrides)
  return c


def _batches(task, config, n):
  it = data.make_iterator(task.train_source(), batch_size=config.batch_size, seed=0)
  return [jax.tree.map(jnp.asarray, next(it)) for _ in range(n)]


def _flat(tree):
  return {path_str(p): x for p, x in jax.tree_util.tree_flatten_with_path(_np(tree))[0]}


def _np(tree):
  """numpy copies of a state (PRNG keys as their key data)."""
  is_key = lambda x: jnp.issubdtype(x.dtype, jax.dtypes.prng_key)
  return jax.tree.map(lambda x: np.asarray(jax.random.key_data(x) if is_key(x) else x), tree)


def _run(config, n):
  task = get_task(config)
  models, state = train.init_state(task, config)
  step = jax.jit(train.make_train_step(task, config, models))
  init = _np(state)
  metrics = []
  for batch in _batches(task, config, n):
    state, m = step(state, batch)
    metrics.append(jax.device_get(m))
  return models, init, _np(state), metrics


def test_frozen_parameters_stay_bit_identical_and_have_no_optimizer_state():
  """AdamW with weight decay 0.5 and only the head trainable, 10 steps: every frozen array is
  bit-identical to its initial value, the head moved, and the optimizer state holds exactly
  two moments of the head (nothing of the frozen layers)."""
  c = _config(trainable="^head/", weight_decay=0.5, learning_rate=1e-2)
  models, init, final, _ = _run(c, 10)
  before, after = init["models"]["model"], final["models"]["model"]
  assert set(_flat(after["params"])) == {"head/bias/value", "head/kernel/value"}
  assert {"layers/0/kernel/value", "layers/1/bias/value"} <= set(_flat(after["frozen"]))
  for k, v in _flat(before["frozen"]).items():
    np.testing.assert_array_equal(_flat(after["frozen"])[k], v, err_msg=k)
  for k, v in _flat(before["params"]).items():
    assert np.max(np.abs(_flat(after["params"])[k] - v)) > 1e-4, k
  head = 16 * 10 + 10
  moments = [x for x in jax.tree.leaves(final["opt_state"]["model"]) if x.ndim > 0]
  assert sum(x.size for x in moments) == 2 * head                 # μ and ν of the head only
  assert models.counts() == (head, 64 * 32 + 32 + 32 * 16 + 16 + head)


def test_trainable_gradient_is_the_full_gradient_restricted_to_it():
  """SGD, η = 1, one step: θ_trainable moves by −∇L exactly as the full gradient (all params,
  an independent jax.grad of the task's loss) restricted to those paths."""
  c = _config(trainable="layers/1/|head", optimizer="sgd", learning_rate=1.0,
              schedule="constant")
  task = get_task(c)
  models, state = train.init_state(task, c)
  batch = _batches(task, c, 1)[0]
  v = jax.tree.map(jnp.copy, state["models"]["model"])
  key = jax.random.fold_in(jax.random.key(c.seed), 0)

  def full_loss(params):              # every Param of the model, trainable and frozen
    m = nnx.merge(models.defs["model"].graph_train, params, v["rest"], copy=True)
    return task.loss(m, batch, key)[0]

  _, every, _ = nnx.split(nnx.merge(models.defs["model"].graph_train, v["params"], v["frozen"],
                                    v["rest"]), nnx.Param, ...)
  g_full = _flat(jax.grad(full_loss)(every))
  new, _ = jax.jit(train.make_train_step(task, c, models))(state, batch)
  moved = {k: x - _flat(v["params"])[k] for k, x in _flat(new["models"]["model"]["params"]).items()}
  assert set(moved) == {"layers/1/kernel/value", "layers/1/bias/value", "head/kernel/value",
                        "head/bias/value"}
  for k, d in moved.items():
    np.testing.assert_allclose(d, -g_full[k], rtol=1e-5, atol=1e-7, err_msg=k)
  assert np.max(np.abs(g_full["layers/0/kernel/value"])) > 0      # it would have had a gradient


def test_frozen_part_is_not_differentiated():
  """The step with one layer trainable does less arithmetic than the full step (XLA's count):
  the frozen first layer's weight gradient [64, 32] is never computed, not computed and masked."""
  c_full, c_part = _config(), _config(trainable="^head/")
  flops = {}
  for name, c in (("full", c_full), ("part", c_part)):
    task = get_task(c)
    models, state = train.init_state(task, c)
    step = jax.jit(train.make_train_step(task, c, models))
    flops[name] = bench.compiled_flops(step, state, _batches(task, c, 1)[0])
  # ∂L/∂W for layers 0 and 1 is 2·B·(64·32 + 32·16) FLOPs; the head's input gradient stays.
  assert flops["full"] - flops["part"] >= 2 * 64 * (64 * 32 + 32 * 16), flops


def test_nothing_trainable_and_bad_patterns_are_one_line():
  with pytest.raises(ConfigError, match="no parameter of model is trainable"):
    ModelSet(get_task(_config(trainable="^nope/")), _config(trainable="^nope/"))
  with pytest.raises(ConfigError, match="not a regular expression"):
    ModelSet(get_task(_config(trainable="(")), _config(trainable="("))


def test_two_models_metrics_go_under_their_own_names():
  """One gan2d step recomputed by hand: the discriminator's loss on the initial models, then the
  generator's against the updated discriminator. Each value is found under its model's name
  (at init −V ≈ 2 ln 2 and the non-saturating loss ≈ ln 2, so a swap would show), and each
  model reports its own learning rate (D 1e-3, G 5e-4)."""
  c = toy2d_gan.get_config("smoke")
  task = get_task(c)
  models, state = train.init_state(task, c)
  batch = _batches(task, c, 1)[0]
  new, m = jax.jit(train.make_train_step(task, c, models))(state, batch)
  key = jax.random.fold_in(jax.random.key(c.seed), 0)
  v = state["models"]
  gen0 = models.merge("generator", **v["generator"], train=True)
  disc0 = models.merge("discriminator", **v["discriminator"], train=True)
  x = batch["x"]
  fake = gen0(task.noise(jax.random.fold_in(key, 0), x))
  d_loss = gan.discriminator_loss(disc0(x), disc0(fake))
  disc1 = models.merge("discriminator", **new["models"]["discriminator"], train=True)
  g_loss = gan.generator_loss(disc1(gen0(task.noise(jax.random.fold_in(key, 1), x))))
  np.testing.assert_allclose(m["discriminator/loss"], d_loss, rtol=1e-6)
  np.testing.assert_allclose(m["generator/loss"], g_loss, rtol=1e-6)
  assert abs(float(d_loss) - float(g_loss)) > 0.3                  # a swap would be seen
  assert float(m["discriminator/learning_rate"]) == pytest.approx(1e-3)
  assert float(m["generator/learning_rate"]) == pytest.approx(5e-4)
  assert "loss" not in m and "grad_norm" not in m


def test_each_model_has_its_own_optimizer():
  """Discriminator learning rate 0: its parameters never move while the generator's do."""
  c = toy2d_gan.get_config("smoke")
  c.optimizers.discriminator.learning_rate = 0.0
  _, init, final, _ = _run(c, 5)
  for k, x in _flat(init["models"]["discriminator"]["params"]).items():
    np.testing.assert_array_equal(_flat(final["models"]["discriminator"]["params"])[k], x)
  g0, g1 = (_flat(s["models"]["generator"]["params"]) for s in (init, final))
  assert max(np.max(np.abs(g1[k] - g0[k])) for k in g0) > 1e-4


def test_bad_optimizer_overrides_are_one_line():
  c = toy2d_gan.get_config("smoke")
  c.optimizers.critic = {"learning_rate": 1.0}
  with pytest.raises(ConfigError, match="does not train.*discriminator"):
    ModelSet(get_task(c), c)
  c = toy2d_gan.get_config("smoke")
  c.optimizers.generator.lr = 1.0
  with pytest.raises(ConfigError, match=r"optimizers.generator has unknown key\(s\) \['lr'\]"):
    ModelSet(get_task(c), c)


# --- init_from, by path ----------------------------------------------------------------------


class _WithValueHead(MLP):
  """The MLP plus a parameter the source lacks (a value head)."""

  def __init__(self, *args, rngs, **kwargs):
    super().__init__(*args, rngs=rngs, **kwargs)
    self.value_head = nnx.Linear(16, 1, rngs=rngs)


class _Task:
  """Just what `init_from.load_into` asks of a task."""

  def __init__(self, new=nnx.Nothing):
    self.new = new

  def new_parameters(self, name):
    return self.new

  def init_source(self, name, names):
    return "model"

  def convert_source(self, name, arrays):
    return arrays


def _values(model, trainable=nnx.Param):
  _, params, frozen, rest = nnx.split(model, nnx.All(nnx.Param, trainable), nnx.Param, ...)
  return {"model": {"params": params, "frozen": frozen, "rest": rest}}


def _source(model):
  return {"model": {k.removesuffix("/value"): v for k, v in _flat(nnx.state(model)).items()}}


def test_init_from_keeps_the_source_values_and_fresh_new_parameters():
  src = MLP(64, 10, hidden=(32, 16), rngs=nnx.Rngs(1))
  fresh = _WithValueHead(64, 10, hidden=(32, 16), rngs=nnx.Rngs(2))
  head_before = _flat(nnx.state(fresh.value_head))
  trainable = lambda path, v: "head" in path_str(path)               # frozen and trainable alike
  values, lines = init_from.load_into(_values(fresh, trainable),
                                      _Task(lambda p, v: path_str(p).startswith("value_head")),
                                      _source(src), "src")
  got = {}
  for part in values["model"].values():
    got.update(_flat(part))
  for k, x in _flat(nnx.state(src, nnx.Param)).items():
    np.testing.assert_array_equal(got[k], x, err_msg=k)                # exact copies
  for k, x in head_before.items():
    np.testing.assert_array_equal(got[f"value_head/{k}"], x)           # fresh init kept
  assert "2 new (fresh): value_head/bias, value_head/kernel" in lines[0]


@pytest.mark.parametrize("source,target,needle", [
    # a width that differs: the first path in order whose shape differs, with both shapes
    (dict(hidden=(32, 16)), dict(hidden=(32, 24)),
     r"model/head/kernel has shape \[16, 10\] in src but \[24, 10\] in this model"),
    # a layer count that grew: the new layer is not in the source (and not declared new)
    (dict(hidden=(16, 16)), dict(hidden=(16, 16, 16)),
     r"this model's parameter model/layers/2/bias \[16\] is not in src"),
    # a layer count that shrank: the source's extra layer has nowhere to go
    (dict(hidden=(16, 16, 16)), dict(hidden=(16, 16)),
     r"src \(model 'model'\) has layers/2/bias \[16\], which this model 'model' lacks"),
])
def test_init_from_refuses_another_architecture_naming_the_path(source, target, needle):
  src = MLP(64, 10, **source, rngs=nnx.Rngs(1))
  other = MLP(64, 10, **target, rngs=nnx.Rngs(2))
  with pytest.raises(ConfigError, match=needle):
    init_from.load_into(_values(other), _Task(), _source(src), "src")


def test_init_from_refuses_undeclared_new_parameters():
  src = MLP(64, 10, hidden=(32, 16), rngs=nnx.Rngs(1))
  with pytest.raises(ConfigError, match="value_head/bias \\[1\\] is not in src"):
    init_from.load_into(_values(_WithValueHead(64, 10, hidden=(32, 16), rngs=nnx.Rngs(2))),
                        _Task(), _source(src), "src")


def test_checkpoint_of_the_older_one_model_layout_resumes(tmp_path):
  """A workdir written before named models ({step, params, rest, opt_state}) restores into the
  new layout with every array equal."""
  c = _config(ema_decay=0.5)
  models, state = train.init_state(get_task(c), c)
  state = jax.tree.map(lambda x: x + 1 if jnp.issubdtype(x.dtype, jnp.floating) else x, state)
  ckpt = Checkpointer(str(tmp_path))
  ckpt.save(7, train.to_legacy(state), {"pos": 3})
  restored, data_state = train.restore(ckpt, train.init_state(get_task(c), c)[1])
  ckpt.close()
  assert data_state == {"pos": 3} and int(restored["step"]) == 0
  chex.assert_trees_all_equal(_np(restored), _np(state))


def test_nonfinite_finds_each_models_loss_and_grad_norm():
  assert train.nonfinite({"loss": 1.0, "grad_norm": 2.0, "accuracy": np.nan}) is None
  assert train.nonfinite({"generator/loss": 1.0, "discriminator/grad_norm": np.inf}) == \
      "discriminator/grad_norm"
  assert train.nonfinite({"ce": 1.0, "d_loss": np.nan}) == "d_loss"


class _PolicyTask(Task):
  """A policy and its frozen reference (one GPT source, as DPO/PPO will have): each step samples
  4 tokens from the policy with the KV cache inside the jitted step, then takes a REINFORCE-style
  step on their log-likelihood, with the reference's log-probs as a metric."""

  def train_source(self):
    return None

  def build_models(self, rngs):
    cfg = gpt.GPTConfig(vocab_size=11, context_len=8, num_layers=1, num_heads=2, d_model=16)
    return {"policy": gpt.GPT(cfg, rngs=rngs), "reference": gpt.GPT(cfg, rngs=rngs)}

  def trainable(self, name):
    return nnx.Param if name == "policy" else nnx.Nothing

  def train_step(self, ctx, batch, key):
    tokens_BT, _ = sampling.generate(ctx.model("policy"), batch["prompt"], 4, key=key,
                                     temperature=1.0, use_cache=True)
    ctx.log(tokens=tokens_BT)

    def logp(model):
      logits = model(tokens_BT[:, :-1]).astype(jnp.float32)
      lp = jnp.take_along_axis(jax.nn.log_softmax(logits), tokens_BT[:, 1:, None], -1)
      return jnp.mean(lp[:, -4:])

    ctx.log(reference_logp=logp(ctx.model("reference")))
    ctx.update("policy", lambda m: (-logp(m), {}))


def test_policy_samples_with_the_kv_cache_inside_the_step_beside_a_frozen_reference():
  c = ml_collections.ConfigDict({"seed": 3, "optimizer": "adam", "learning_rate": 1e-2,
                                 "schedule": "constant", "num_train_steps": 10})
  task = _PolicyTask(c)
  models, state = train.init_state(task, c)
  assert models.trained == ("policy",) and set(state["opt_state"]) == {"policy"}
  batch = {"prompt": jnp.array([[1, 2, 3], [4, 5, 6]], jnp.int32)}
  step = jax.jit(train.make_train_step(task, c, models))
  init = _np(state)
  new, m = step(state, batch)
  key = jax.random.fold_in(jax.random.key(c.seed), 0)
  policy0 = models.merge("policy", **state["models"]["policy"], train=False)
  expect, _ = sampling.generate(policy0, batch["prompt"], 4, key=key, temperature=1.0)
  np.testing.assert_array_equal(m["tokens"], expect)          # the same draw, in or out of jit
  for _ in range(3):
    new, m = step(new, batch)
  after = _np(new)
  chex.assert_trees_all_equal(after["models"]["reference"], init["models"]["reference"])
  p0, p1 = (_flat(s["models"]["policy"]["params"]) for s in (init, after))
  assert max(np.max(np.abs(p1[k] - p0[k])) for k in p0) > 1e-4
  assert np.isfinite(m["reference_logp"]) and "loss" in m     # one trained model: plain names


def test_step_on_leaves_equals_the_step_on_the_state_and_checks_the_structure():
  """The loop's form of the step (`step.on_leaves`, a flat list of arrays: cheaper dispatch)
  gives the same state and metrics, bit for bit, and refuses a step that changes the tree."""
  config = _config()
  task = get_task(config)
  models, state = train.init_state(task, config)
  treedef = jax.tree.structure(state)
  plain = jax.jit(train.make_train_step(task, config, models))
  flat = jax.jit(train.on_leaves(train.make_train_step(task, config, models), treedef))
  s, leaves = state, jax.tree.leaves(state)
  for batch in _batches(task, config, 3):
    s, m_plain = plain(s, batch)
    leaves, m_flat = flat(leaves, batch)
    chex.assert_trees_all_equal(jax.device_get(m_plain), jax.device_get(m_flat))
  chex.assert_trees_all_equal(_np(s), _np(jax.tree.unflatten(treedef, leaves)))
  grow = lambda st, b: ({**st, "extra": jnp.zeros(())}, {})
  with pytest.raises(ValueError, match="changed the state's structure"):
    jax.jit(train.on_leaves(grow, treedef))(jax.tree.leaves(state), None)
