"""Text-to-image diffusion on captioned Fashion-MNIST (padded to 32×32): cross-attention to a
frozen CLIP text tower, CFG with the empty prompt (experiments/tasks/text2image.py; 2112.10752).

The text tower is the GPT of a finished `captions_clip.py` run (2 layers, width 64, 16 tokens),
frozen; the FID classifier `fashion_lenet.py` (trained first into `fid_classifier_workdir` when it
holds no run) scores the samples' class and their Fréchet distance. Prompts: the train captions
(train templates) for training; eval on the first n = 500 TEST captions in the HELD-OUT
templates ("there is a dark wide dress here").
Command:  python -m genfm.experiments.run --config=experiments/configs/fashion_t2i.py --workdir=runs/fashion_t2i \
            --config.init_from_models.text=runs/captions_clip
          then  python -m genfm.experiments.t2i_sweep --workdir=runs/fashion_t2i
          (class accuracy and FD vs guidance scale, table + PNG; a negative-prompt row)
Hardware: CPU, 2 cores (a ≤ 10-min check run was made; the lead runs the long run).
Model:    fashion_ddpm's U-Net (16/32/32 channels, 32 → 16 → 8, self-attention in the middle)
          with 4 heads and cross-attention at 16×16, 8×8 and the middle block (context 64-d):
          310,993 trained parameters (fashion_ddpm's class U-Net: 268,017), plus the frozen
          104,640 of the text tower; no labels (the text is the only condition). Guidance s = 3.
Run time: not trained in full (the latent variant `fashion_ldm.py:t2i` was: class accuracy
          0.932, FD 6.20; WORKSPACE.md). A 300-step check (batch 32, warmup 50) on the
          2-core CPU under load ~12 (five agents): 1.0–1.2 steps/s after a ~3 min compile
          (fashion_ddpm's U-Net ran 2.9 steps/s on a quieter machine); at step 300 (train loss
          0.056) `t2i_sweep` with n = 100: class accuracy 0.14 / 0.15 and FD 145 / 131 (floor
          15.6 at n = 100) at s = 1 / 3 — far from trained, a pipeline check only.
Expect:   the eval metrics `class_accuracy` (our LeNet on the samples vs the prompt's class;
          LeNet's own test accuracy 0.918 is the ceiling, chance 0.1), `attribute_agreement`
          (chance ≈ 1/3), `fd` vs `fd_floor` (n = 500), `attn_class_word`; numbers: WORKSPACE.md.
`:dit`  — a DiT (D 128, 6 blocks, 4 heads, patch 4, as fashion_dit.py; 2,138,768 trained
          parameters) with PixArt-α cross-attention after each block's self-attention
          (2310.00426), fashion_dit's 3,490 steps.
`:smoke` — sklearn digits (8×8, no padding), a tiny U-Net (8/16 channels, 2 heads,
          cross-attention at 4×4 and the middle; 47,945 parameters), a RANDOM frozen text tower
          (1 layer, width 32; no clip run needed; the summary says text_tower_random = 1),
          300 steps, n = 140 held-out prompts, DDIM-20, s = 3; its digits classifier
          (`fashion_lenet.py:smoke`, ~20 s) is trained first into runs/fashion_lenet_smoke:
          python -m genfm.experiments.run --config=experiments/configs/fashion_t2i.py:smoke --workdir=runs/fashion_t2i_smoke
          5m23s wall under load ~12 (2-core CPU shared by five agents; compiles dominate).
          Expect: `fd` ≤ 70 (measured 44.5 vs floor 5.58, n = 140) and `test_loss` < 0.2
          (measured 0.117), held by tests/experiments/test_experiments_text2image.py. Also
          measured, not promised: class_accuracy 0.129 (chance 0.1: 300 steps with a random
          tower barely teach the prompt), attribute_agreement 0.551, attn_class_word 0.135.
"""

import ml_collections

from genfm.experiments.configs import fashion_ddpm, fashion_dit
from genfm.experiments.configs.common import check_variant, set_schedule

VARIANTS = ("", "dit", "smoke")


def get_config(variant: str = "") -> ml_collections.ConfigDict:
  check_variant("fashion_t2i", variant, VARIANTS)
  c = fashion_ddpm.get_config("smoke" if variant == "smoke" else "")
  c.name, c.task = "fashion_t2i", "text2image"
  c.text_len = 16                           # the clip run's (its position table)
  c.captions_per_image = 1
  c.text = ml_collections.ConfigDict({"num_layers": 2, "d_model": 64, "num_heads": 4})
  c.init_from_models = ml_collections.ConfigDict({"text": "runs/captions_clip"})
  c.allow_random_text = False
  c.model.num_heads = 4                     # 8-d heads for the cross-attention
  c.model.cross_attn_resolutions = (16, 8)  # + the middle block (8×8)
  c.diffusion.guidance_scale = 3.0          # s = 1 + w; t2i_sweep.py measures the others
  c.eval.attention_t = 500                  # maps read on samples noised to t
  c.eval.attention_prompts = 4
  if variant == "dit":
    c.name = "fashion_t2i_dit"
    c.model = fashion_dit.dit_model(128, 6, 4, 4)
    set_schedule(c, fashion_dit.DIT_STEPS, log=100, eval_=fashion_dit.DIT_STEPS, checkpoint=500)
  if variant == "smoke":
    c.name = "fashion_t2i_smoke"
    c.text = ml_collections.ConfigDict({"num_layers": 1, "d_model": 32, "num_heads": 2})
    c.init_from_models.text = ""            # a random frozen tower (allowed for smoke only)
    c.allow_random_text = True
    c.model.num_heads = 2
    c.model.cross_attn_resolutions = (4,)   # 8 → 4; + the middle block
    c.eval.attention_prompts = 3
    set_schedule(c, 300, log=50, eval_=300, checkpoint=300)
  return c
