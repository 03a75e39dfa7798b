"""BPE GPT on Shakespeare, dense and Mixture-of-Experts (4 experts, top-2) at equal active params.

Command:  python -m genfm.experiments.run --config=experiments/configs/shakespeare_bpe.py[:moe] --workdir=runs/shakespeare_bpe
Hardware: CPU, 2 cores.   Run time (machine shared by ~6 jobs, load ~14): dense 29 min wall /
          329 s CPU for 2,000 steps; `:moe` 40 min wall / 1,426 s CPU (4.3x the CPU: the one-hot
          dispatch/combine einsums, [M, E, C] with C = 480 slots, cost more than the experts).
          The first run also trains the tokenizer (~1-3 min; then cached under
          $GENFM_DATA_DIR/bpe, or ~/.cache/genfm/bpe).
Expect:   byte-level BPE, 512 tokens trained on the first 200k training characters; 1.909
          chars/token on the eval windows. The eval reports validation_loss (nats/token) and
          validation_loss_per_char (nats/char, comparable with shakespeare_char.py).
          Dense (867,072 params) measured: 3.354 nats/token = 1.756 nats/char at 2,000 steps
          (1.858 at 1,000). `:moe` (866,560 active of 1,390,848): 3.266 nats/token = 1.711
          nats/char (1.823 at 1,000); load balance 1.006 (1 = balanced), 0.08% tokens dropped.
          `:smoke` (tiny tokenizer and model): 2.85 nats/char measured (< ln 84 = 4.43), 21 s CPU.
"""

import ml_collections

from genfm.experiments.configs.common import base_config, check_variant

VARIANTS = ("", "moe", "smoke")


def get_config(variant: str = "") -> ml_collections.ConfigDict:
  check_variant("shakespeare_bpe", variant, VARIANTS)
  c = base_config(f"shakespeare_bpe{':' + variant if variant else ''}", task="lm",
                  dataset="shakespeare")
  c.tokenizer = "bpe"
  c.vocab_size = 512                # 256 bytes + 256 merges
  c.bpe_train_chars = 200_000       # BPE training is O(merges · chars) Python: a prefix
  c.bpe_cache_dir = ""              # "" = $GENFM_DATA_DIR (or ~/.cache/genfm) / bpe
  c.model = ml_collections.ConfigDict({
      "context_len": 64, "num_layers": 4, "num_heads": 4, "d_model": 128,
      "positions": "learned", "norm": "layernorm", "ffn": "gelu", "use_bias": True,
      "dropout": 0.0,
      # Accelerator knobs (--config.model.dtype=bfloat16 --config.model.attention_impl=pallas).
      "dtype": "float32", "attention_impl": "reference"})
  c.batch_size = 12
  c.optimizer, c.learning_rate, c.weight_decay = "adamw", 1e-3, 0.1
  c.schedule, c.warmup_steps = "warmup_cosine", 100
  c.grad_clip_norm = 1.0
  c.num_train_steps = 2000
  c.log_every_steps = 100
  c.eval_every_steps = 1000
  c.checkpoint_every_steps = 1000
  c.eval_windows = 500              # 32,000 val tokens, fixed and evenly spaced
  c.eval_batch_size = 100           # divides eval_windows: no padding rows take MoE capacity
  c.sample_prompt = "HAMLET.\n"
  c.sample_new_tokens = 56
  c.num_samples = 2
  c.sample_temperature = 0.8
  if variant == "moe":
    # Every FFN becomes 4 experts of half width, top-2 routed (Mixtral-style renormalised
    # gates): 2 active experts × 2·128·256 = the dense 2·128·512 FFN weights. Switch α = 0.01.
    c.model.update({"num_experts": 4, "top_k": 2, "d_ff": 256, "capacity_factor": 1.25})
    c.load_balance_weight = 0.01
    c.router_z_weight = 1e-3
  elif variant == "smoke":
    c.vocab_size, c.bpe_train_chars = 300, 20_000
    c.model.update({"context_len": 32, "num_layers": 1, "num_heads": 2, "d_model": 64})
    c.batch_size, c.learning_rate, c.warmup_steps = 32, 3e-3, 20
    c.num_train_steps = c.eval_every_steps = c.checkpoint_every_steps = 200
    c.log_every_steps = 50
    c.eval_windows, c.eval_batch_size = 100, 100
    c.sample_new_tokens = 16
  return c
