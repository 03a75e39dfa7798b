"""A CNN made of the from-scratch convolution and pooling (genfm.foundations.conv), Fashion-MNIST.

Model "scratch_cnn" (experiments/tasks/classify.py): [conv 3×3 'SAME' → ReLU → max-pool 2] × 2
(16, 32 channels) → FC 128 → FC 10. Every conv is `conv.conv2d` — a sum over the K_h·K_w window
offsets of strided input slices times w[u, v] (LeCun et al. 1989), proven equal to
`lax.conv_general_dilated` in tests/foundations/test_foundations_conv.py — and every pool is
`conv.max_pool2d`; no `nnx.Conv`, no `lax.reduce_window`. jax differentiates the sums, so the
backward pass is the same sums transposed.

Command:  python -m genfm.experiments.run --config=experiments/configs/foundations_conv.py --workdir=runs/foundations_conv
Hardware: CPU, 2 cores.   Run time: 163 ms of CPU per step ⇒ 1407 steps ≈ 230 s of CPU; 22 min
          wall on the shared machine (load 10-17). LeNet (nnx.Conv, 5×5) costs the same 164 ms of
          CPU per step there and runs 78 ms/step quiet, so ~2 min wall on a quiet 2-core CPU.
Expect:   test_accuracy >= 0.88 after 3 epochs (measured 0.8927, test loss 0.306);
          `:smoke` (sklearn digits, 300 steps, seconds) >= 0.95 (measured 0.970).
Filters:  python -m genfm.foundations.figures OUT --only filters  (first-layer 3×3 filters of the
          same `conv.Conv2D` layer in a small CNN trained on digits, not of this run's model:
          figures.py has no function that takes a trained kernel).
"""

import ml_collections

from genfm.experiments.configs.common import base_config, check_variant, digits_smoke, set_schedule


def get_config(variant: str = "") -> ml_collections.ConfigDict:
  check_variant("foundations_conv", variant)
  c = base_config("foundations_conv", task="classify", dataset="fashion_mnist")
  c.model = ml_collections.ConfigDict(
      {"name": "scratch_cnn", "channels": (16, 32), "hidden": 128, "kernel_size": 3})
  set_schedule(c, 1407, log=100, eval_=1407, checkpoint=469)  # 3 epochs of 60k at batch 128
  if variant == "smoke":
    digits_smoke(c)
    c.model.channels, c.model.hidden = (8, 16), 64
  return c
