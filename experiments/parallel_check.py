"""The loop's train step under several meshes, side by side: losses, per-device FLOPs, shards.

    XLA_FLAGS=--xla_force_host_platform_device_count=8 python -m genfm.experiments.parallel_check

builds each config's step exactly as `train.py` does (the task's models and state, the mesh of
`config.mesh`, the state's shardings from the models' logical axes, batches split over
data × fsdp) and runs it for `steps` steps on the same batches; the reference is the same step
jitted with no shardings on one device. Prints one JSON object (tests/experiments/
test_experiments_parallel.py holds it to the issue's bounds; the `parallel` bench reuses it).
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
import tempfile

import jax
import jax.numpy as jnp
import numpy as np

from genfm.experiments import data, mesh as meshes, train
from genfm.experiments.checkpoint import Checkpointer
from genfm.experiments.tasks import get_task
from genfm.foundations import partitioning

CONFIGS = {"gpt": "shakespeare_char.py:smoke", "unet": "fashion_ddpm.py:smoke",
           "mlp": "fashion_mlp.py:smoke"}
# On 8 devices. The smoke GPT has 2 heads, so tensor parallelism is 2-way beside 4-way data.
MESHES = {"dp": {"data": -1, "fsdp": 1, "model": 1}, "fsdp": {"data": 1, "fsdp": -1, "model": 1},
          "dp_tp": {"data": -1, "fsdp": 1, "model": 2}, "fsdp_tp": {"data": 1, "fsdp": -1, "model": 2}}
PLAN = {"gpt": ("dp", "fsdp", "dp_tp"), "unet": ("dp", "fsdp"), "mlp": ("dp",)}


def load_config(spec: str):
  path, _, variant = spec.partition(":")
  here = os.path.join(os.path.dirname(__file__), "configs", path)
  s = importlib.util.spec_from_file_location("_cfg", here)
  m = importlib.util.module_from_spec(s)
  s.loader.exec_module(m)
  return m.get_config(variant) if variant else m.get_config()


def batches(task, config, n: int) -> list[dict]:
  it = data.make_iterator(task.train_source(), seed=config.seed, shuffle=True,
                          batch_size=config.batch_size, transform=task.train_transform())
  return [next(it) for _ in range(n)]


def flops(compiled) -> float:
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return float(cost["flops"])


def run(config, batch_list, mesh_sizes: dict | None, *, save_dir: str | None = None,
        restore_dir: str | None = None) -> dict:
  """Losses of len(batch_list) steps, the per-device FLOPs and bytes of the compiled step, and
  (under a mesh) each parameter's per-device fraction with the fraction its spec implies.

  `save_dir`: also checkpoint the state after half the steps there. `restore_dir`: start from
  that checkpoint instead (whatever mesh wrote it: Orbax reshards to this one's layout) and run
  the second half of the batches."""
  task = get_task(config)
  models, state = train.init_state(task, config)
  step_fn = train.make_train_step(task, config, models)
  if mesh_sizes is None:                          # the reference: one device, no shardings
    step = jax.jit(step_fn, donate_argnums=0)
    put = lambda b: jax.tree.map(jnp.asarray, b)
    out = {}
  else:
    config.mesh = mesh_sizes
    shape = meshes.mesh_shape(config)
    mesh = meshes.make_mesh(config)
    specs = meshes.param_specs(models, config, shape)
    sharding = meshes.state_shardings(state, specs, mesh)
    state = jax.device_put(state, sharding)
    by_batch = meshes.batch_sharding(mesh)
    step = jax.jit(step_fn, in_shardings=(sharding, by_batch),
                   out_shardings=(sharding, meshes.replicated(mesh)), donate_argnums=0)
    put = lambda b: train.to_global(b, by_batch)
    out = {"mesh": shape, "fractions": fractions(state, specs, shape)}
  compiled = step.lower(state, put(batch_list[0])).compile()
  mem = compiled.memory_analysis()
  out["flops"] = flops(compiled)
  out["bytes"] = {k: int(getattr(mem, f"{k}_size_in_bytes", 0) or 0)
                  for k in ("argument", "output", "temp")} if mem is not None else {}
  half = len(batch_list) // 2
  if restore_dir is not None:
    ckpt = Checkpointer(restore_dir)
    state, _ = ckpt.restore_latest(state)
    ckpt.close()
    out["restored_step"] = int(state["step"])
    if mesh_sizes is not None:
      out["restored_fractions"] = fractions(state, specs, shape)
    batch_list = batch_list[half:]
  losses = []
  for i, b in enumerate(batch_list):
    state, metrics = step(state, put(b))
    losses.append(float(metrics["loss"]))
    if save_dir is not None and i + 1 == half:
      ckpt = Checkpointer(save_dir)
      ckpt.save(half, state, {})
      ckpt.close()
  out["losses"] = losses
  return out


def fractions(state, specs, shape) -> dict:
  """{path: [measured per-device fraction of the parameter, of its first optimizer moment,
  the fraction its spec implies, its element count]} for model 'model' (first device's shard)."""
  out = {}
  params = state["models"]["model"]["params"]
  moments = [leaf for leaf in jax.tree_util.tree_flatten_with_path(state["opt_state"]["model"])[0]]
  for path, (spec, _) in specs["model"].items():
    x = _leaf(params, path)
    mu = next((v for kp, v in moments if "/".join(meshes._tokens(kp)).endswith(path)), None)
    frac = lambda a: a.addressable_shards[0].data.size / a.size
    out[path] = [frac(x), frac(mu) if mu is not None else None,
                 1 / float(np.prod(partitioning.shards(spec, shape))), int(x.size)]
  return out


def _leaf(tree, path: str):
  for kp, v in jax.tree_util.tree_flatten_with_path(tree)[0]:
    if "/".join(meshes._tokens(kp)) == path:
      return v
  raise KeyError(path)


def main(argv=()) -> dict:
  """Every config of PLAN on one device and on each of its meshes; for the GPT also a
  checkpoint written under FSDP halfway and resumed under DP × TP ("fsdp_to_dp_tp")."""
  steps = int(argv[0]) if argv else 20
  plan = PLAN if len(argv) < 2 else json.loads(argv[1])
  results = {"device_count": jax.device_count(), "steps": steps}
  with tempfile.TemporaryDirectory() as tmp:
    for name, mesh_names in plan.items():
      config = load_config(CONFIGS[name])
      batch_list = batches(get_task(config), config, steps)
      results[name] = {"one_device": run(load_config(CONFIGS[name]), batch_list, None)}
      for m in mesh_names:
        save = os.path.join(tmp, name) if (name, m) == ("gpt", "fsdp") else None
        results[name][m] = run(load_config(CONFIGS[name]), batch_list, dict(MESHES[m]),
                               save_dir=save)
        if save:
          results[name]["fsdp_to_dp_tp"] = run(load_config(CONFIGS[name]), batch_list,
                                               dict(MESHES["dp_tp"]), restore_dir=save)
  return results


if __name__ == "__main__":
  print(json.dumps(main(sys.argv[1:])))
