"""CLIP (2103.00020) on captioned Fashion-MNIST (experiments/data/captions.py): a ViT image tower
(patch 4 → 49 tokens, 3 layers, width 64, mean pool) and a GPT text tower (2 layers, width 64),
E = 64, 1,200 steps of 128 pairs (2 train-template captions per image).

Command:  python -m genfm.experiments.run --config=experiments/configs/captions_clip.py --workdir=runs/captions_clip
Hardware: CPU, 2 cores shared with other agents' runs: 8 min 46 s wall (launcher's "done in";
          1.3–3.4 steps/s), 12 min 54 s for the same run under heavier load. Deterministic: both
          runs gave the same numbers.
Expect (measured; test split with the HELD-OUT caption templates; see experiments/tasks/clip.py):
          zero-shot accuracy 0.707 from the class prompts alone (chance 0.1);
          linear probe 0.826 (5,000 train images; train 0.853);
          retrieval over the first 1,000 test images, a hit = same class and attribute words:
          image→text recall@1 / @5 0.639 / 0.920 (ranking the 180 distinct captions),
          text→image 0.739 / 0.989 (chance @1 0.011);
          temperature 0.07 → 0.0423 after 1,200 steps, still falling (temperature.png).
          `:smoke` (digits, 300 steps, 65 s on an idle machine): zero-shot 0.552, probe 0.835,
          image→text / text→image recall@5 0.747 / 0.819; held to ≥ 0.4, ≥ 0.7, ≥ 0.5, ≥ 0.6
          by tests/experiments/test_experiments_clip.py.
SigLIP:   `:siglip` (--workdir=runs/captions_clip_siglip), 9 min 38 s: zero-shot 0.717,
          probe 0.808, image→text 0.602 / 0.903, text→image 0.778 / 0.989; t' from 10 to 10.5
          (temperature 0.0952) and bias −10 → −10.22: at lr 2e-3 Adam moves each scalar by ≲ 2e-3
          a step, so both stay near their init in 1,200 steps (2303.15343 trains far longer).
Variants: "siglip" (the pairwise sigmoid loss of 2303.15343, same towers and steps);
          "smoke" / "siglip_smoke" (sklearn digits, 8×8, patch 2, seconds).
"""

import ml_collections

from genfm.experiments.configs.common import base_config, check_variant, set_schedule

VARIANTS = ("", "smoke", "siglip", "siglip_smoke")


def get_config(variant: str = "") -> ml_collections.ConfigDict:
  check_variant("captions_clip", variant, VARIANTS)
  c = base_config("captions_clip", task="clip", dataset="fashion_mnist")
  c.text_len = 16                   # BOS + ≤ 7 words + EOS fits in 9; room for longer templates
  c.captions_per_image = 2          # distinct train templates per image
  c.model = ml_collections.ConfigDict({
      "vision": {"patch": 4, "num_layers": 3, "d_model": 64, "num_heads": 4, "pool": "mean",
                 "positions": "learned"},
      "text": {"num_layers": 2, "d_model": 64, "num_heads": 4},
      "embed_dim": 64,
      "loss": "clip",
  })
  c.eval = ml_collections.ConfigDict({"retrieval_images": 1000, "probe_images": 5000,
                                      "probe_steps": 300, "probe_l2": 1e-4})
  c.batch_size = 128
  c.learning_rate = 2e-3
  c.weight_decay = 0.1
  c.decay_mask = "matrices"         # no decay on the temperature, biases and norms
  c.schedule = "warmup_cosine"
  c.warmup_steps = 100
  set_schedule(c, 1200, log=50, eval_=1200, checkpoint=400)
  if variant.endswith("smoke"):
    c.dataset = "digits"
    c.model.vision.patch = 2        # 8×8 digits: 16 patches
    c.eval.probe_steps = 200
    c.warmup_steps = 20
    set_schedule(c, 300, log=50, eval_=300, checkpoint=300)
  if variant.startswith("siglip"):
    c.name = "captions_clip_siglip"
    c.model.loss = "siglip"
  return c
