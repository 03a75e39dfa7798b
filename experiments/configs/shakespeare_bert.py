"""BERT-style masked-character model on Shakespeare (masked-token recovery, 1810.04805 sec. 3.1).

Command:  python -m genfm.experiments.run --config=experiments/configs/shakespeare_bert.py --workdir=runs/shakespeare_bert
Hardware: CPU, 2 cores.   Run time: 140 s CPU, 15.6 min wall for 1,500 steps on the 2-core
          machine shared by ~6 jobs (load ~19); an idle machine is several times faster.
Expect:   masked-token recovery on 1,000 fixed validation windows (64 chars, 15 % predicted,
          80/10/10), 109,909 params. Measured at steps 500 / 1,000 / 1,500:
            validation_mask_accuracy (positions shown as [MASK])  0.268 / 0.314 / 0.335
            validation_accuracy (all predicted positions)          0.328 / 0.369 / 0.387
            validation_loss (nats per predicted char)              2.474 / 2.290 / 2.210
          Baseline: always answering the most frequent character (space) scores 0.165.
          Still rising at the end: a longer run (or a wider model) goes further.
          `:smoke` (32-char windows, 600 steps, 48 s CPU): validation_mask_accuracy >= 0.21
          (measured 0.251; accuracy 0.323, loss 2.528).
          With BERT's learned position table instead of ALiBi (2 heads, 300 steps), the model
          stayed at the baseline (mask accuracy 0.162, loss 3.01; ALiBi 0.182, 2.89).
"""

import ml_collections

from genfm.experiments.configs.common import base_config, check_variant

VARIANTS = ("", "smoke")


def get_config(variant: str = "") -> ml_collections.ConfigDict:
  check_variant("shakespeare_bert", variant, VARIANTS)
  c = base_config(f"shakespeare_bert{':' + variant if variant else ''}", task="mlm",
                  dataset="shakespeare")
  # BERT layout (post-norm, GELU MLP, tied MLM head), small: 2 layers of width 64 over
  # 64-character windows; no segment embeddings (single windows, no NSP). Positions are ALiBi
  # biases (as MosaicBERT, 2312.17482): with BERT's learned table the small model sat at the
  # unigram loss for the whole smoke run (attention has to learn locality from scratch, and
  # only 15 % of the positions give a gradient).
  c.model = ml_collections.ConfigDict({
      "max_len": 64, "positions": "alibi", "type_vocab_size": 0, "num_layers": 2,
      "num_heads": 4, "d_model": 64, "d_ff": 256, "norm_placement": "post", "norm_eps": 1e-12,
      "dropout": 0.0})
  c.mask_rate = 0.15                # 80/10/10 of the chosen positions, as in the paper
  c.batch_size = 32
  c.optimizer, c.learning_rate, c.weight_decay = "adamw", 3e-3, 0.01
  c.schedule, c.warmup_steps = "warmup_cosine", 100  # BERT: linear warmup, then decay
  c.grad_clip_norm = 1.0
  c.num_train_steps = 1500
  c.log_every_steps = 100
  c.eval_every_steps = 500
  c.checkpoint_every_steps = 500
  c.eval_windows = 1000             # fixed, non-overlapping: 64,000 val chars, ~10k predicted
  c.eval_batch_size = 250
  if variant == "smoke":
    c.model.update({"max_len": 32})
    c.warmup_steps = 20
    c.num_train_steps = c.eval_every_steps = c.checkpoint_every_steps = 600
    c.log_every_steps = 50
    c.eval_windows, c.eval_batch_size = 400, 200
  return c
