"""Visual question answering on captioned Fashion-MNIST: a tiny LLaVA (2304.08485) and a tiny
Flamingo (2204.14198) on the frozen image tower of a CLIP run.

Commands (the chain; each run reads the one before it):
  python -m genfm.experiments.run --config=experiments/configs/captions_clip.py --workdir=runs/captions_clip
  python -m genfm.experiments.run --config=experiments/configs/captions_vlm.py:text --workdir=runs/vlm_text
  python -m genfm.experiments.run --config=experiments/configs/captions_vlm.py:llava_align --workdir=runs/vlm_llava_align
  python -m genfm.experiments.run --config=experiments/configs/captions_vlm.py:llava_finetune --workdir=runs/vlm_llava_finetune
  python -m genfm.experiments.run --config=experiments/configs/captions_vlm.py:flamingo --workdir=runs/vlm_flamingo
  (llava_align and flamingo read --config.init_from_models.vision / .vlm, default the workdirs
  above; llava_finetune reads --config.init_from, default runs/vlm_llava_align)
Hardware: CPU, 2 cores shared with 3 other jobs (2026-12-03).  Run time: text 1000 steps 2.5 min;
          llava_align 500 steps 9.0 min; llava_finetune 500 steps 6.1 min; flamingo 500 steps 5.7 min.
Expect:   held-out question templates on the first 2000 test-split QA records (867 of them
          class questions, 1,133 attribute questions), exact match = greedy decoding of the
          one-word answer and EOS (see experiments/tasks/vlm.py), and the trained parameters:
            run (CLIP run: zero-shot 0.707)   EM      class   attribute  trainable params
            text (blind, prior only)          0.3145  0.0957  0.4819     103,616 (the GPT)
            llava_align (projector only)      0.5470  0.1649  0.8394       8,320
            llava_finetune (projector + LM)   0.8850  0.7958  0.9532     111,936
            flamingo (resampler + xattn)      0.6575  0.2653  0.9576     199,812
          Flamingo (LM frozen) often answers a held-out class phrasing ("name the object ?") with
          an attribute word (answers_step500.png): on the TRAIN phrasings of the same test images
          its class EM is 0.4152 (llava_align 0.1788, llava_finetune 0.8108; measured by
          re-evaluating the checkpoints), so part of its class gap is phrasing, not vision.
          `:smoke` (LLaVA from scratch, random frozen vision, 120 steps): answer loss 0.921 nats
          (ln V = 4.01 at init), EM 0.148; held to loss < 1.1 and EM > 0.1.
Variants: "text" (the GPT alone on QA + caption text: the blind baseline), "llava_align"
          (stage 1: projector only), "llava_finetune" (stage 2: projector + LM), "flamingo"
          (resampler + gated cross-attention, LM frozen); "smoke" (digits, random vision and LM,
          LLaVA trained whole from scratch, no init_from: seconds), and for the chain test
          "smoke_text", "smoke_align", "smoke_flamingo" (digits, the smoke sizes; set
          --config.init_from_models.* to a `captions_clip.py:smoke` run and a smoke_text run).
"""

import ml_collections

from genfm.experiments.configs import captions_clip
from genfm.experiments.configs.common import base_config, check_variant, set_schedule

VARIANTS = ("", "text", "llava_align", "llava_finetune", "flamingo", "smoke", "smoke_text",
            "smoke_align", "smoke_flamingo")
RUNS = "runs"  # relative to the launcher's working directory, as in the README


def get_config(variant: str = "") -> ml_collections.ConfigDict:
  check_variant("captions_vlm", variant, VARIANTS)
  kind = variant or "llava_align"
  smoke = kind.startswith("smoke")
  c = base_config(f"captions_vlm:{kind}", task="vlm", dataset="fashion_mnist")
  c.text_len = 16
  c.stage = "align"                  # text | align | finetune
  c.vlm = ml_collections.ConfigDict({
      "kind": "llava",               # llava | flamingo
      "projector": "mlp",            # linear (LLaVA) | mlp (LLaVA-1.5)
      "xattn_every": 1,              # Flamingo: a gated cross-attention block before every k-th layer
      "num_latents": 8,              # Flamingo: resampler outputs M = 8 media tokens
      "resampler_layers": 2,
  })
  # The vision tower must be the CLIP run's (its config.json is checked against this).
  clip = captions_clip.get_config("smoke" if smoke else "")
  c.model = ml_collections.ConfigDict({
      "vision": clip.model.vision.to_dict(),
      "text": {"num_layers": 2, "d_model": 64, "num_heads": 4},
  })
  c.init_from_models = ml_collections.ConfigDict({
      "vision": f"{RUNS}/captions_clip", "vlm": f"{RUNS}/vlm_text"})
  c.num_eval = 2000                  # held-out QA records (the first test images')
  c.batch_size = 128
  c.eval_batch_size = 500
  c.learning_rate = 1e-3
  c.weight_decay = 0.0
  c.schedule = "warmup_cosine"
  c.warmup_steps = 50
  set_schedule(c, 500, log=50, eval_=500, checkpoint=250)

  if kind in ("text", "smoke_text"):
    c.stage = "text"
    set_schedule(c, 1000, log=50, eval_=500, checkpoint=500)
    c.init_from_models = ml_collections.ConfigDict({"vision": "", "vlm": ""})
  elif kind == "llava_finetune":
    c.stage = "finetune"
    c.init_from = f"{RUNS}/vlm_llava_align"
    c.init_from_models = ml_collections.ConfigDict({"vision": "", "vlm": ""})
    c.learning_rate = 3e-4
  elif kind in ("flamingo", "smoke_flamingo"):
    c.vlm.kind = "flamingo"
  if smoke:
    c.dataset = "digits"
    c.num_eval = 500
    c.learning_rate = 3e-3
    c.batch_size = 64
    c.warmup_steps = 20
    set_schedule(c, 120, log=40, eval_=120, checkpoint=120)
    if kind == "smoke":              # everything from scratch: vision random and frozen
      c.stage = "finetune"
      c.init_from_models = ml_collections.ConfigDict({"vision": "", "vlm": ""})
    else:                            # the chain test sets the source runs
      c.init_from_models = ml_collections.ConfigDict({"vision": "", "vlm": ""})
      c.stage = {"smoke_text": "text"}.get(kind, "align")
  return c
