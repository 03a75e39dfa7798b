"""Character-level GPT on Shakespeare (nanoGPT's CPU config of shakespeare_char).

Command:  python -m genfm.experiments.run --config=experiments/configs/shakespeare_char.py --workdir=runs/shakespeare_char
Hardware: CPU, 2 cores.   Run time: 40 min wall / 353 s CPU for 2,000 steps on a 2-core
          machine shared by ~6 jobs (load 9-15; 0.84 steps/s); an idle machine is faster.
Expect:   validation_loss 1.900 nats/char measured (0.81M params). Issue 4 targets <= 1.88
          (nanoGPT 1.886), which also uses AdamW β2 = 0.99, no decay on gains/biases and a
          1e-4 floor on the cosine; `experiments/optim.py` does not expose those yet.
          `:modern` (RoPE + RMSNorm + SwiGLU, 811,648 vs 812,288 params): 1.698 measured
          (34 min, 0.98 steps/s, same load).
          `:big` (6 layers, 6 heads, width 384, context 256, batch 64, 5,000 steps, 10.8M
          params, 1.2 TFLOP per step): a GPU config, not run here (~3.5 days on this CPU at the
          measured ~20 GFLOP/s); nanoGPT reports 1.47 on tiny-shakespeare at this shape.
          `:smoke` (seconds of compute) validation_loss <= 2.6 nats/char (measured 2.40), far
          below ln 84 = 4.43.
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
