"""ControlNet on Sobel edge maps beside the locked Fashion-MNIST class-conditional DDPM.

ControlNet, arXiv:2302.05543 (task `controlnet`, `experiments/tasks/controlnet.py`): the base is
the finished `fashion_ddpm` U-Net (268,017 params, frozen); the trainable copy of its encoder
half and middle block starts from the base's weights, a 3-conv hint encoder embeds the edge map
(Sobel magnitude > 3 on the padded [−1, 1] pixels: ~16% of Fashion pixels), and zero 1×1 convs
return one residual per skip feature and one for the middle block. Labels dropped to the null
label with p = 0.5 (sec. 3.3 of the paper). Eval: edge F1 (tolerance 1 px) of guided DDIM-25
samples (s = 2) vs their control maps, with and without control, for the first 200 test images.

Command:  python -m genfm.experiments.run --config=experiments/configs/fashion_controlnet.py --workdir=runs/fashion_controlnet
          (base `config.init_from = runs/fashion_ddpm`, read only; FID classifier runs/fashion_lenet)
Hardware: CPU, 2 cores (shared).
Run time: 16m05s wall on the 2-core CPU under load 10–13 (other agents' runs): 800 steps of batch
          32 at 1.3–1.6 steps/s (10 min; a step runs the locked base forward and backward through
          its decoder to the residuals, plus the copy), then one eval: 2 × 200 guided DDIM-25
          samples, the held-out losses and the FDs (5.5 min).
Measured: (2026-12-03; base = the 5,000-step fashion_ddpm, 268,017 params, locked; ControlNet
          120,896 trainable) at step 800: held-out ε-loss (first 1,000 test images, same t and ε)
          **0.0367 with control vs 0.0412** for the base alone (its own run's 0.0412: the base
          is untouched); edge F1 (tolerance 1 px, first 200 test images, same labels and noise)
          **0.876 with control vs 0.724 without**; FD 17.44 with vs 18.73 without (floor 5.78
          at n = 200); the control maps cover 16.3% of the pixels. Grid control_grid_step800.png:
          the controlled samples take the outline of the control (the pullover's print, the
          coat's open front) where the uncontrolled ones draw a generic item of the class.
Expect:   edge_f1_with ≥ edge_f1_without + 0.1 and test_loss < test_loss_base (measured
          0.876 vs 0.724; 0.0367 vs 0.0412).
`:smoke` — digits (8×8), base `fashion_ddpm.py:smoke` in runs/fashion_ddpm_smoke (train it first:
          `python -m genfm.experiments.run --config=experiments/configs/fashion_ddpm.py:smoke
          --workdir=runs/fashion_ddpm_smoke`; a random-init base is refused: its zero output conv
          passes no gradient to a ControlNet), classifier runs/fashion_lenet_smoke.
          100 ControlNet steps of batch 64 (lr 3e-3), eval n = 100 guided DDIM-10, F1 at
          tolerance 0 (8×8 maps, 24% edge pixels: 1 px of slack would match almost anything).
          python -m genfm.experiments.run --config=experiments/configs/fashion_controlnet.py:smoke --workdir=runs/fashion_controlnet_smoke
          2m43s wall under load ~12 (mostly XLA compiles; 26 steps/s once compiled). Measured
          (2026-12-03, base a 150-step fashion_ddpm:smoke run): test_loss 0.1475 vs base 0.1538;
          edge F1 0.403 with vs 0.371 without; FD 67.7 with vs 61.3 without (floor 11.5, n = 100).
          Expect: test_loss < test_loss_base and edge_f1_with > edge_f1_without;
          tests/experiments/test_experiments_controlnet.py runs it from a 60-step base it trains
          and asserts both.
"""

import ml_collections

from genfm.experiments.configs import fashion_ddpm
from genfm.experiments.configs.common import check_variant, set_schedule

VARIANTS = ("", "smoke")


def get_config(variant: str = "") -> ml_collections.ConfigDict:
  check_variant("fashion_controlnet", variant, VARIANTS)
  smoke = variant == "smoke"
  c = fashion_ddpm.get_config("smoke" if smoke else "")   # the base's network, data, diffusion
  c.name, c.task = "fashion_controlnet", "controlnet"
  c.init_from = "runs/fashion_ddpm"            # the locked base run (read only)
  c.controlnet = ml_collections.ConfigDict({
      "hint_threshold": 3.0,       # Sobel magnitude on [−1, 1] pixels (a full −1 → 1 step: 8)
      "hint_widths": (16, 32),     # the hint encoder's conv3×3 widths before its zero conv
      "p_uncond": 0.5,             # label → null label while training (sec. 3.3 of 2302.05543)
      "f1_tolerance": 1,           # pixels, for the eval's edge F1
      "strength": 1.0,             # scale of the control residuals
  })
  c.diffusion.sample_steps = 25
  c.eval.num_samples, c.eval.sample_batch_size = 200, 200
  c.optimizer, c.learning_rate, c.weight_decay = "adam", 1e-3, 0.0
  c.schedule, c.warmup_steps, c.grad_clip_norm = "warmup_cosine", 50, 1.0
  c.batch_size = 32
  set_schedule(c, 800, log=100, eval_=800, checkpoint=200)
  if smoke:
    c.name, c.init_from = "fashion_controlnet_smoke", "runs/fashion_ddpm_smoke"
    c.controlnet.hint_threshold, c.controlnet.hint_widths = 6.0, (8,)
    c.controlnet.f1_tolerance = 0            # 8×8 maps at ~24% density: 1 px is a lot
    c.diffusion.sample_steps = 10
    c.eval.num_samples, c.eval.sample_batch_size, c.eval.num_loss_images = 100, 100, 297
    c.batch_size, c.learning_rate, c.warmup_steps = 64, 3e-3, 10
    set_schedule(c, 100, log=50, eval_=100, checkpoint=100)
  return c
