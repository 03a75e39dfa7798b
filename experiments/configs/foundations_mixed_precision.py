"""Mixed precision (1710.03740): the fashion_mlp recipe with bf16 compute vs fp32.

Same model (MLP 784-512-256-10, BatchNorm, dropout 0.2), data order, our AdamW + warmup-cosine
and step count as `fashion_mlp.py:recipe`; only `compute_dtype` changes. bf16: fp32 master
weights and optimizer state, bf16 forward/backward, fp32 cross-entropy (experiments/tasks/
classify.py). No loss scaling: bf16 keeps fp32's exponent range (the dynamic loss scaler for fp16
is genfm.foundations.mixed_precision, tested there).

Command:  python -m genfm.experiments.run --config=experiments/configs/foundations_mixed_precision.py:bf16 --workdir=runs/mp_bf16
          (bf16 | fp32; fp32 is the recipe run itself)
Hardware: CPU, 2 cores (XLA:CPU has no fast bf16 matmul, so bf16 is not faster here; the point is
          the accuracy).   Run time: 436 s for bf16 on a shared, loaded machine (fp32: 142 s).
Expect:   bf16 test_accuracy within 0.5 points of fp32 and >= 0.89 (measured bf16 0.9074,
          fp32 0.9094);
          `bf16_smoke` / `fp32_smoke` (sklearn digits, seconds) >= 0.95 and within 0.02 of each other.
"""

import ml_collections

from genfm.experiments.configs import fashion_mlp
from genfm.experiments.configs.common import check_variant

VARIANTS = ("bf16", "fp32", "bf16_smoke", "fp32_smoke", "smoke")


def get_config(variant: str = "bf16") -> ml_collections.ConfigDict:
  check_variant("foundations_mixed_precision", variant, VARIANTS)
  if variant == "smoke":                 # every config has a `:smoke`: the default's
    variant = "bf16_smoke"
  c = fashion_mlp.get_config("recipe_smoke" if variant.endswith("_smoke") else "recipe")
  precision = variant.removesuffix("_smoke")
  c.name = f"foundations_mixed_precision_{precision}"
  c.compute_dtype = {"bf16": "bfloat16", "fp32": "float32"}[precision]
  return c
