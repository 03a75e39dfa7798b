"""genfm vs the peer implementation researchers compare against: `genfm-bench gpt_vs_nanogpt`.

gpt_vs_nanogpt: genfm's GPT train step (the launcher's own `make_train_step` with the
  shakespeare_char recipe: AdamW β₂ 0.99, decay on matrices, clip 1.0) against karpathy/nanoGPT's
  (`model.py` + `configure_optimizers` + `clip_grad_norm_`, torch on the CPU, no compile) at the
  same shape, batch, FLOPs and thread count, in one run:
    * `char`: nanoGPT's CPU shakespeare_char model (4 layers, 4 heads, width 128, context 64,
      batch 12; vocabulary 84, our corpus's);
    * `gpt2_small`: GPT-2 small (124M, vocabulary 50,257), context 256, batch 4.
  Method: the two run in different processes (torch is never a genfm dependency: it lives in a
  bench-only venv, `GENFM_TORCH_PYTHON`, and nanoGPT's `model.py` is read from a checkout,
  `GENFM_NANOGPT_DIR`; `experiments/bench_peers_worker.py` drives it over JSON lines).
  After a warm-up, `rounds` rounds alternate a block of `steps` genfm steps with a block of
  `steps` nanoGPT steps, so load drift on the shared machine hits both; each side's round time
  is its block's seconds per step (genfm's steps run as the launcher runs them, one in flight;
  nanoGPT's one after another, as its train.py), each round's ratio is genfm / nanoGPT, and the
  row reports the median of the rounds' ratios with the spread, and each side's median time.
  Only one side runs at a time (the other waits on a pipe), each on all cores.
  Without the two variables the bench emits one row saying how to set them up.
"""

import json
import os
import subprocess
import time

import jax
import numpy as np

from genfm.experiments.bench_lm import GPTTask
from genfm.transformers import gpt

CASES = {  # label: (model overrides, batch, steps per round, rounds)
    "char": (dict(vocab_size=84, context_len=64, num_layers=4, num_heads=4, d_model=128), 12,
             20, 7),
    "gpt2_small": (dict(vocab_size=50257, context_len=256, num_layers=12, num_heads=12,
                        d_model=768), 4, 3, 5),
}


def _genfm_step(overrides: dict, batch: int):
  """(run() -> loss, model config, launcher config): one call is one launcher step."""
  from genfm.experiments.configs import shakespeare_char  # pylint: disable=g-import-not-at-top
  from genfm.experiments.models import ModelSet  # pylint: disable=g-import-not-at-top
  from genfm.experiments import step as step_lib  # pylint: disable=g-import-not-at-top

  cfg = shakespeare_char.get_config()
  cfg.batch_size = batch
  model_cfg = gpt.GPTConfig(**{**cfg.model.to_dict(), **overrides})
  task = GPTTask(cfg, model_cfg)
  models = ModelSet(task, cfg)
  state = models.initial_state()
  treedef = jax.tree.structure(state)  # the loop's form: the state's leaves (`on_leaves`)
  step = jax.jit(step_lib.on_leaves(step_lib.make_train_step(task, cfg, models), treedef),
                 donate_argnums=0)
  state = jax.tree.leaves(state)
  tokens = jax.random.randint(jax.random.key(1), (batch, model_cfg.context_len + 1), 0,
                              model_cfg.vocab_size)
  holder = [state]

  def run(n: int = 1) -> float:
    """n steps as the launcher's loop runs them (one step in flight: the host dispatches step
    i + 1 while step i computes); returns the last loss, as a float (all steps finished)."""
    pending = []
    for _ in range(n):
      holder[0], metrics = step(holder[0], {"tokens": tokens})
      pending.append(metrics["loss"])
      if len(pending) >= 2:
        jax.block_until_ready(pending[-2])
    return float(pending[-1])

  return run, model_cfg, cfg


class _Peer:
  """The nanoGPT worker process (JSON lines over a pipe)."""

  def __init__(self, python: str, nanogpt_dir: str):
    if not os.access(python, os.X_OK):
      raise ValueError(f"GENFM_TORCH_PYTHON={python} is not an executable Python; point it at "
                       "the python of a venv that has torch")
    if not os.path.isfile(os.path.join(nanogpt_dir, "model.py")):
      raise ValueError(f"GENFM_NANOGPT_DIR={nanogpt_dir} holds no model.py; point it at a "
                       "checkout of karpathy/nanoGPT")
    worker = os.path.join(os.path.dirname(__file__), "bench_peers_worker.py")
    self.proc = subprocess.Popen([python, worker, "--nanogpt_dir", nanogpt_dir],
                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

  def ask(self, **msg) -> dict:
    self.proc.stdin.write(json.dumps(msg) + "\n")
    self.proc.stdin.flush()
    line = self.proc.stdout.readline()
    if not line:
      raise RuntimeError("the nanoGPT worker exited; run it by hand to see why: "
                         f"{self.proc.args}")
    return json.loads(line)

  def close(self):
    self.proc.stdin.write(json.dumps({"cmd": "quit"}) + "\n")
    self.proc.stdin.flush()
    self.proc.wait(timeout=60)


def _mean_step(run, n: int) -> float:
  """Seconds per step over a block of n steps."""
  t = time.perf_counter()
  run(n)
  return (time.perf_counter() - t) / n


def gpt_vs_nanogpt(emit, cases=None) -> None:
  python, nano = os.environ.get("GENFM_TORCH_PYTHON"), os.environ.get("GENFM_NANOGPT_DIR")
  if not python or not nano:
    emit({"name": "gpt_vs_nanogpt", "skipped": "set GENFM_TORCH_PYTHON (a venv with torch, "
          "e.g. `python -m venv /tmp/t && /tmp/t/bin/pip install torch numpy`) and "
          "GENFM_NANOGPT_DIR (a checkout of karpathy/nanoGPT holding model.py)"})
    return
  peer = _Peer(python, nano)
  threads = os.cpu_count()
  try:
    for label in cases or CASES:
      overrides, batch, steps, rounds = CASES[label]
      run, mcfg, cfg = _genfm_step(overrides, batch)
      info = peer.ask(cmd="setup", n_layer=mcfg.num_layers, n_head=mcfg.num_heads,
                      n_embd=mcfg.d_model, block_size=mcfg.context_len,
                      vocab_size=mcfg.vocab_size, batch_size=batch, bias=mcfg.use_bias,
                      lr=cfg.learning_rate, weight_decay=cfg.weight_decay, betas=[0.9, cfg.b2],
                      grad_clip=cfg.grad_clip_norm, threads=threads)
      run(2)
      peer.ask(cmd="time", steps=2)  # warm-up: compile here, allocator and caches there
      ours, theirs = [], []
      for _ in range(rounds):
        ours.append(_mean_step(run, steps))
        theirs.append(float(np.mean(peer.ask(cmd="time", steps=steps)["seconds"])))
      ratios = [a / b for a, b in zip(ours, theirs)]
      t_ours, t_theirs = np.median(ours), np.median(theirs)
      emit({"name": "gpt_vs_nanogpt", "shape": label, "batch_size": batch,
            "context_len": mcfg.context_len, "params_genfm": gpt.param_count(mcfg),
            "params_nanogpt": info["params"], "genfm_seconds": float(t_ours),
            "nanogpt_seconds": float(t_theirs), "ratio": float(np.median(ratios)),
            "ratio_min": float(min(ratios)), "ratio_max": float(max(ratios)),
            "rounds": rounds, "steps_per_round": steps, "torch": info["torch"],
            "threads": info["threads"], "jax": jax.__version__})
  finally:
    peer.close()
