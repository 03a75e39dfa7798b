"""Character-level GPT on Shakespeare (nanoGPT's CPU config of shakespeare_char).

Command:  python -m genfm.experiments.run --config=experiments/configs/shakespeare_char.py --workdir=runs/shakespeare_char
Hardware: CPU, 2 cores (shared).   Run time: ~4 min, 2,000 steps (loaded machine).
Expect:   validation_loss <= 1.88 nats/char (0.81M params);
          `:modern` (RoPE + RMSNorm + SwiGLU, 0.81M params) below the default;
          `:big` (6 layers, width 384, context 256, 10.7M params): about 1.45 nats/char after
          5,000 steps, GPU-sized (hours on this CPU; see WORKSPACE.md);
          `:smoke` (seconds) validation_loss <= 2.6 nats/char, well below ln 84 = 4.43.
See the WORKSPACE.md topics table for the measured numbers and times.
"""

import ml_collections

from genfm.experiments.configs.common import base_config, check_variant

VARIANTS = ("", "modern", "big", "smoke")


def get_config(variant: str = "") -> ml_collections.ConfigDict:
  check_variant("shakespeare_char", variant, VARIANTS)
  c = base_config(f"shakespeare_char{':' + variant if variant else ''}", task="lm",
                  dataset="shakespeare")
  c.tokenizer = "char"
  # GPT-2 style: learned positions, pre-LayerNorm, GELU MLP (4·D), tied embeddings.
  c.model = ml_collections.ConfigDict({
      "context_len": 64, "num_layers": 4, "num_heads": 4, "d_model": 128,
      "positions": "learned", "norm": "layernorm", "ffn": "gelu", "use_bias": True,
      "dropout": 0.0})
  c.batch_size = 12
  c.optimizer, c.learning_rate, c.weight_decay = "adamw", 1e-3, 0.1
  c.schedule, c.warmup_steps = "warmup_cosine", 100   # cosine to 0 after a 100-step warmup
  c.grad_clip_norm = 1.0
  c.num_train_steps = 2000
  c.log_every_steps = 100
  c.eval_every_steps = 1000
  c.checkpoint_every_steps = 1000
  c.eval_windows = 1000             # fixed, evenly spaced, non-overlapping: 64,000 val chars
  c.eval_batch_size = 200           # divides eval_windows: no padded batch
  c.sample_prompt = "HAMLET.\n"
  c.sample_new_tokens = 56          # prompt + new tokens fill the 64-token context
  c.num_samples = 2
  c.sample_temperature = 0.8
  if variant == "modern":
    # LLaMA-style: RoPE (2104.09864), RMSNorm (1910.07467), SwiGLU (2002.05202), no biases.
    # d_ff 350 (not round(8D/3) = 341) buys back the 8,192 position-table and bias parameters:
    # 811,648 parameters vs the default's 812,288 (-0.08%).
    c.model.update({"positions": "rope", "norm": "rmsnorm", "ffn": "swiglu", "use_bias": False,
                    "d_ff": 350})
  elif variant == "big":
    # nanoGPT's GPU shakespeare_char: 6 layers, 6 heads, width 384, context 256, dropout 0.2.
    c.model.update({"context_len": 256, "num_layers": 6, "num_heads": 6, "d_model": 384,
                    "dropout": 0.2})
    c.batch_size, c.num_train_steps = 64, 5000
    c.eval_windows, c.eval_batch_size = 400, 50
    c.sample_new_tokens = 248
  elif variant == "smoke":
    c.model.update({"context_len": 32, "num_layers": 2, "num_heads": 2, "d_model": 64})
    c.batch_size, c.learning_rate = 32, 3e-3
    c.warmup_steps = 20
    c.num_train_steps = c.eval_every_steps = c.checkpoint_every_steps = 300
    c.log_every_steps = 50
    c.eval_windows, c.eval_batch_size = 200, 100
    c.sample_new_tokens = 24
  return c
