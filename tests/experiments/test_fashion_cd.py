"""The consistency task (`consistency`, config fashion_cd.py): the teacher workdir is checked in one
line (no checkpoint, another config), the student starts as the teacher with f(x, ε) = x and a
target θ⁻ that is an untrained copy, and `:smoke` runs through the real launcher from a tiny teacher
trained in the test, reporting 1- and 2-step FDs beside the teacher's DDIM-10."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from genfm.diffusion import consistency as cm
from genfm.experiments.configs import fashion_cd, fashion_ddpm
from genfm.experiments.errors import ConfigError
from genfm.experiments.tasks.consistency import ConsistencyTask, TargetParam


def _fake_teacher(tmp_path, name="teacher", **changes):
  """A workdir with a checkpoint directory and the config.json of fashion_ddpm:smoke (+ changes);
  enough for the task's checks (the weights themselves are not read here)."""
  d = tmp_path / name
  (d / "checkpoints" / "150" / "state").mkdir(parents=True)
  cfg = json.loads(fashion_ddpm.get_config("smoke").to_json_best_effort())
  for k, v in changes.items():
    sub = cfg
    *head, last = k.split(".")
    for h in head:
      sub = sub[h]
    sub[last] = v
  (d / "config.json").write_text(json.dumps(cfg))
  return str(d)


def _smoke(teacher_dir, **overrides):
  c = fashion_cd.get_config("smoke")
  c.init_from, c.fid_classifier_workdir = teacher_dir, ""
  for k, v in overrides.items():
    c[k] = v
  return c


def test_bad_teacher_workdirs_one_line(tmp_path):
  empty = tmp_path / "empty"
  empty.mkdir()
  with pytest.raises(ConfigError, match="holds no checkpoint"):
    ConsistencyTask(_smoke(str(empty)))
  with pytest.raises(ConfigError, match="needs its teacher"):
    ConsistencyTask(_smoke(""))
  with pytest.raises(ConfigError, match=r"another config .* its task is 'classify'"):
    ConsistencyTask(_smoke(_fake_teacher(tmp_path, "clf", task="classify")))
  with pytest.raises(ConfigError, match="its model is"):
    ConsistencyTask(_smoke(_fake_teacher(tmp_path, "wide", **{"model.base_channels": 16})))
  with pytest.raises(ConfigError, match="its dataset is 'fashion_mnist'"):
    ConsistencyTask(_smoke(_fake_teacher(tmp_path, "fm", dataset="fashion_mnist")))
  c = _smoke(_fake_teacher(tmp_path, "ok"))
  c.cm.mode = "lcm"
  with pytest.raises(ConfigError, match="valid choices"):
    ConsistencyTask(c)
  c = _smoke(_fake_teacher(tmp_path, "ok2"))
  c.cm.sample_sigmas_2step = (0.8, 80.0)
  with pytest.raises(ConfigError, match="NFE ≥ 1"):
    ConsistencyTask(c)


def test_student_starts_as_teacher_with_a_target_copy(tmp_path):
  task = ConsistencyTask(_smoke(_fake_teacher(tmp_path)))
  paths = {}

  @nnx.jit                      # eager initialisation op by op is slow on a shared CPU
  def build():
    models = task.build_models(nnx.Rngs(0))
    student, teacher = models["student"], models["teacher"]
    # perturb the teacher (its zero output conv would make everything trivially equal) and
    # load it into the student the way init_from does: convert_source's net/ and target/ paths
    leaves, tree = jax.tree.flatten(nnx.state(teacher, nnx.Param))
    keys = jax.random.split(jax.random.key(0), len(leaves))
    nnx.update(teacher, jax.tree.unflatten(tree, [p + 0.05 * jax.random.normal(k, p.shape)
                                                  for p, k in zip(leaves, keys)]))
    flat = {"/".join(map(str, p)): v[...] for p, v in nnx.to_flat_state(nnx.state(teacher))}
    conv = task.convert_source("student", flat)
    paths.update(teacher=set(flat), student=set(conv))
    for p, var in nnx.to_flat_state(nnx.state(student)):
      var[...] = conv["/".join(map(str, p))]
    return student, teacher

  student, teacher = build()
  assert paths["student"] == ({f"net/{p}" for p in paths["teacher"]}
                              | {f"target/{p}" for p in paths["teacher"]})
  x = jax.random.normal(jax.random.key(1), (6, 8, 8, 1))
  labels = jnp.arange(6) % 10
  sig = jnp.full((6,), 5.0)
  gs, ss = nnx.split(student)
  gt, ts = nnx.split(teacher)

  @jax.jit                      # one compile: eager U-Net calls are slow on a shared CPU
  def outputs(ss, ts):
    st, te = nnx.merge(gs, ss), nnx.merge(gt, ts)
    f = task.consistency_fn(st.net, labels)
    guided = task.teacher_denoiser(te, labels)(x, sig)
    scale, task.config.diffusion.guidance_scale = task.config.diffusion.guidance_scale, 1.0
    cond = task.teacher_denoiser(te, labels)(x, sig)     # the student is the unguided teacher
    task.config.diffusion.guidance_scale = scale
    return f(x, jnp.full((6,), cm.EPS)), f(x, sig), cond, guided

  at_eps, f5, cond, guided = outputs(ss, ts)
  # f(x, ε) = x exactly through the task's parameterisation; away from ε, f ≈ the teacher's D
  np.testing.assert_array_equal(at_eps, x)
  np.testing.assert_allclose(f5, cond, atol=0.03)
  assert float(jnp.max(jnp.abs(guided - cond))) > 1e-3   # guidance s = 2 changes the teacher
  # target θ⁻ is a TargetParam copy: not a Param (never trained), same values
  assert not nnx.state(student.target, nnx.Param)
  t_leaves = jax.tree.leaves(nnx.state(student.target, TargetParam))
  n_leaves = jax.tree.leaves(nnx.state(student.net, nnx.Param))
  assert len(t_leaves) == len(n_leaves) and all(
      np.array_equal(a, b) for a, b in zip(t_leaves, n_leaves))


# Three launcher processes (teacher, its LeNet + 30 CD steps, a refused teacher): 210–498 s measured
# on the 2-core CPU under load ~10 (other agents' runs), mostly XLA compiles of the U-Net steps.
@pytest.mark.slow
def test_smoke_through_the_launcher(tmp_path, launch):
  """A tiny digits teacher (fashion_ddpm:smoke shrunk), its LeNet, then 30 CD steps; the run
  reports fd_1step, fd_2step, the teacher's DDIM-10 FD and the floor, and writes the grids."""
  teacher, clf, run = (str(tmp_path / n) for n in ("teacher", "lenet", "cd"))
  r = launch("fashion_ddpm.py:smoke", teacher, "--config.num_train_steps=60",
              "--config.eval_every_steps=1000", "--config.checkpoint_every_steps=60",
              "--config.fid_classifier_workdir=")
  assert r.returncode == 0, r.stderr[-2000:]
  r = launch("fashion_cd.py:smoke", run, f"--config.init_from={teacher}",
              "--config.num_train_steps=30", "--config.eval_every_steps=30",
              "--config.checkpoint_every_steps=30", f"--config.fid_classifier_workdir={clf}")
  assert r.returncode == 0, r.stderr[-2000:]
  summary = json.load(open(os.path.join(run, "summary.json")))
  for k in ("fd_1step", "fd_2step", "fd_teacher_ddim10", "fd_floor"):
    assert np.isfinite(summary[k]), summary
  assert summary["fd_floor"] < min(summary["fd_1step"], summary["fd_2step"])
  for f in ("samples_1step_step30.png", "samples_2step_step30.png", "teacher_ddim10.png"):
    assert os.path.exists(os.path.join(run, f))
  # a teacher workdir of another task, one line through the launcher (exit 2)
  r = launch("fashion_cd.py:smoke", str(tmp_path / "cd2"), f"--config.init_from={clf}",
              "--config.fid_classifier_workdir=")
  assert r.returncode == 2 and "another config" in r.stderr.strip().splitlines()[-1]
