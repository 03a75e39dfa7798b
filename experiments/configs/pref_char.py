"""Preference learning on the instruction-tuned char GPT: a reward model, DPO, IPO and cDPO.

Command:  python -m genfm.experiments.run --config=experiments/configs/instruct_char.py:full --workdir=runs/sft_full --config.learning_rate=3e-4
          python -m genfm.experiments.run --config=experiments/configs/pref_char.py:dpo --workdir=runs/pref_dpo
          (variants: rm, dpo, ipo, cdpo; `--config.init_from=DIR` names the SFT run)
Hardware: CPU, 2 cores.  Run time: rm 400 steps 11 min; dpo / ipo 150 steps at 2,000 items 4–6
          min, 3 of them building the pairs (2026-12-02, CPU shared with a second job).
Expect:   rm: held-out pairwise accuracy style 1.000, correct-vs-SFT-sample 0.610. dpo at lr 2e-6
          (the default; at 1e-5 DPO collapsed the model: exact match 0.004)
          and ipo: implicit-reward accuracy on style pairs 1.000 but the greedy style rate stays
          0 and exact match falls 0.482 → 0.352 (dpo, KL 1.85) / 0.406 (ipo, KL 1.06).
          `:smoke` (DPO from `instruct_char:smoke`): style pairs 1.00, held to >= 0.95;
          `:smoke_rm`: style pairs 0.96, held to >= 0.9.
"""

import ml_collections

from genfm.experiments.configs import instruct_char
from genfm.experiments.configs.common import check_variant, set_schedule

VARIANTS = ("", "rm", "dpo", "ipo", "cdpo", "smoke", "smoke_rm")


def get_config(variant: str = "") -> ml_collections.ConfigDict:
  check_variant("pref_char", variant, VARIANTS)
  c = instruct_char.get_config("full")
  c.name = f"pref_char{':' + variant if variant else ''}"
  c.task = "preference"
  c.init_from = "runs/sft_full"        # the SFT run (lr 3e-4): policy, reference, RM init
  c.pack = False
  c.num_train_examples = 1000          # (the SFT parent's rows; unused for training here)
  c.preference = ml_collections.ConfigDict({
      "kind": "dpo",
      "pairs": "both",                 # style (a full stop before END) + correct-vs-SFT-sample
      "num_pairs": 2000,               # train items; each gives ≤ 1 pair of each kind
      "tries": 4,                      # T = 1 samples per item to find a wrong one
      "beta": 0.1,                     # IPO: τ
      "label_smoothing": 0.0,          # cDPO: ε
      "cache_reference": True,         # reference log-probs once, at build time
  })
  c.batch_size = 32
  # lr 2e-6: at 1e-5 DPO collapsed the model in 100 steps (exact match 0.004, KL 24 nats).
  c.optimizer, c.learning_rate, c.weight_decay = "adamw", 2e-6, 0.0
  c.schedule, c.warmup_steps = "warmup_cosine", 20
  c.grad_clip_norm = 1.0
  set_schedule(c, 150, log=25, eval_=50, checkpoint=50)
  c.eval_batch_size = 500

  kind = variant or "dpo"
  if kind in ("rm", "smoke_rm"):
    c.preference.kind, c.learning_rate, c.preference.num_pairs = "rm", 3e-5, 4000
    set_schedule(c, 400, log=25, eval_=100, checkpoint=100)
  elif kind == "ipo":
    c.preference.kind, c.preference.beta = "ipo", 0.1
  elif kind == "cdpo":
    c.preference.kind, c.preference.label_smoothing = "cdpo", 0.1
  if kind.startswith("smoke"):
    # From the instruct_char:smoke run (count, upper): the launcher path in ~30 s.
    c.init_from = "runs/instruct_smoke"
    c.model.update({"context_len": 48, "num_layers": 2, "num_heads": 2, "d_model": 64})
    c.instruction_tasks = ("count", "upper")
    c.num_train_examples, c.num_eval = 400, 100
    c.preference.num_pairs = 400
    c.forget_windows = 50
    c.learning_rate = 1e-4 if kind == "smoke" else 3e-4
    set_schedule(c, 60, log=20, eval_=60, checkpoint=60)
  return c
