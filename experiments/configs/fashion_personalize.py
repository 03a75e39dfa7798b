"""Personalisation of the Fashion text-to-image model to a new concept: textual inversion
(2208.01618), DreamBooth (2208.12242) and LoRA (2106.09685) (experiments/tasks/personalize.py).

The concept: 8 training sneakers with a bright 5×5 square stamped in the top-left corner
(`diffusion/personalize.py`); its prompt "a seven sneaker" ("seven" is a digits word no Fashion
caption uses: the rare token; the CLIP tower never trained its embedding). "Does the concept
appear" = the corner square's mean brightness above 1/2 while the mirrored top-right square stays
at most 1/2 (a saturated sample lights both; 0 of the 10 000 real test images). Base: the
finished text-to-image run `fashion_t2i.py` (its U-Net and frozen CLIP text tower), read-only through `config.init_from`; this config's model keys are that config's
and the task refuses a base run whose recorded ones differ.
Command:  python -m genfm.experiments.run \
            --config=experiments/configs/fashion_personalize.py:dreambooth \
            --workdir=runs/fashion_pz_dreambooth --config.init_from=runs/fashion_t2i
          (:textual_inversion, :lora likewise; "" = :dreambooth)
Hardware: CPU, 2 cores.
Metrics (after_eval; base_* = the frozen base, same prompts and noise): concept_rate and
          accuracy of "a seven sneaker" samples, class_concept_rate / class_accuracy of "a
          sneaker" (language drift), other_concept_rate / other_accuracy of "a {class}" for the 9
          other classes (prior drift); eval_per_prompt = 30 (10 per other class), DDIM-50, s = 3.
`:ldm_<method>` — the same on the LATENT text-to-image base (fashion_ldm.py:t2i, runs/fashion_ldm_t2i;
          the stamped instances are encoded like every image), 300 steps, 8–9 min wall each under
          load (2026-12-03); concept rate / sneaker accuracy for "a seven sneaker", then for "a
          sneaker" (language drift) and the 9 other classes (prior drift), base in brackets:
            ldm_dreambooth          1.00 (0.00) / 0.53;  0.03 / 1.00;  0.17 / 0.88 (0.00 / 0.97)
            ldm_lora                0.67 (0.00) / 0.77;  0.40 / 0.83;  0.06 / 0.64
            ldm_textual_inversion   0.03 (0.00) / 0.37;  0.00 / 1.00;  0.00 / 0.97 (= the base)
          Expect: ldm_dreambooth concept_rate ≥ 0.8 with class_concept_rate ≤ 0.1. The pixel
          variants (base runs/fashion_t2i) are not measured: that base was not trained in full.
`:smoke` — sklearn digits on a RANDOM base (the freshly initialised fashion_t2i.py:smoke models,
          random frozen text tower; no base run is trained first): "a bag one" with a 2×2 corner
          square on 8 ones, DreamBooth with the prior loss on 16 class images, 40 steps; the
          digits classifier (`fashion_lenet.py:smoke`) is trained first if missing. It tests the
          plumbing, not the method: see SMOKE_EXPECT in
          tests/experiments/test_experiments_personalize.py.
"""

import ml_collections

from genfm.experiments.configs import fashion_ldm, fashion_t2i
from genfm.experiments.configs.common import check_variant, set_schedule

VARIANTS = ("", "dreambooth", "textual_inversion", "lora", "smoke", "ldm_dreambooth",
            "ldm_textual_inversion", "ldm_lora")
LEARNING_RATES = {"dreambooth": 5e-4, "textual_inversion": 1e-2, "lora": 3e-3}


def get_config(variant: str = "") -> ml_collections.ConfigDict:
  check_variant("fashion_personalize", variant, VARIANTS)
  smoke, ldm = variant == "smoke", variant.startswith("ldm_")
  method = "dreambooth" if variant in ("", "smoke") else variant.removeprefix("ldm_")
  if ldm:      # on the latent text-to-image model (fashion_ldm.py:t2i), in its latent space
    c = fashion_ldm.get_config("t2i")
  else:
    c = fashion_t2i.get_config("smoke" if smoke else "")
  c.name, c.task = f"fashion_pz_{'ldm_' if ldm else ''}{method}", "personalize"
  # the base's U-Net and its frozen text tower
  c.init_from = "" if smoke else ("runs/fashion_ldm_t2i" if ldm else "runs/fashion_t2i")
  c.init_from_models.text = ""
  c.personalize = ml_collections.ConfigDict({
      "method": method,
      "token": "seven",                  # rare: a digits word, never in a Fashion caption
      "class_word": "sneaker",
      "init_word": "sneaker",            # textual inversion's v* starts as this word (sec. 4.1)
      "prompt": "a {token} {cls}",
      "class_prompt": "a {cls}",
      "num_instance": 8,
      "stamp_size": 5,
      "repeats": 8,                      # records per epoch = num_instance · repeats
      "prior_weight": 1.0 if method != "textual_inversion" else 0.0,   # λ of eq. (2)
      "num_class_images": 32,
      "class_seed": 100,
      "lora_targets": r"attn/(q|k|v|out|qkv|proj)$",   # self- and cross-attention projections
      "lora_rank": 4,
      "lora_alpha": 4.0,
      "eval_per_prompt": 30,
  })
  c.batch_size = 8                       # + 8 class images with the prior loss
  c.optimizer, c.learning_rate, c.weight_decay = "adam", LEARNING_RATES[method], 0.0
  c.schedule, c.warmup_steps, c.grad_clip_norm = "constant", 0, 1.0
  c.ema_decay = 0.0
  c.eval.sample_batch_size = 300
  set_schedule(c, 300, log=50, eval_=300, checkpoint=300)
  if smoke:
    c.name = "fashion_pz_smoke"
    c.personalize.update({"token": "bag", "class_word": "one", "init_word": "one",
                          "stamp_size": 2, "num_class_images": 16, "eval_per_prompt": 9,
                          "repeats": 2})
    c.learning_rate = 3e-3
    c.diffusion.sample_steps = 10
    c.eval.sample_batch_size = 64
    set_schedule(c, 40, log=10, eval_=40, checkpoint=40)
  return c
