"""Registry of experiment families: `config.task` → `Task` subclass (imported lazily)."""

import importlib

from genfm.experiments.errors import unknown_choice

# name -> "module:Class"; modules are imported only when their task is used.
TASKS = {
    "classify": "genfm.experiments.tasks.classify:ClassificationTask",
    "lm": "genfm.experiments.tasks.lm:LanguageModelTask",
    "diffusion2d": "genfm.experiments.tasks.diffusion2d:Diffusion2DTask",
    "mlm": "genfm.experiments.tasks.mlm:MaskedLMTask",
    "seq2seq": "genfm.experiments.tasks.seq2seq:Seq2SeqTask",
    "diffusion_image": "genfm.experiments.tasks.diffusion_image:DiffusionImageTask",
    "regression": "genfm.experiments.tasks.regression:RegressionTask",
    "gan2d": "genfm.experiments.tasks.gan2d:GAN2DTask",
    "sft": "genfm.experiments.tasks.sft:SFTTask",
    "rl": "genfm.experiments.tasks.rl:RLTask",
    "preference": "genfm.experiments.tasks.preference:PreferenceTask",
    "vae": "genfm.experiments.tasks.vae:VAETask",
    "gan_image": "genfm.experiments.tasks.gan_image:GANImageTask",
    "lm_rnn": "genfm.experiments.tasks.lm_rnn:RNNLanguageModelTask",
    "seq2seq_rnn": "genfm.experiments.tasks.seq2seq_rnn:RNNSeq2SeqTask",
    "cnf2d": "genfm.experiments.tasks.cnf2d:CNF2DTask",
    "clip": "genfm.experiments.tasks.clip:CLIPTask",
    "vlm": "genfm.experiments.tasks.vlm:VLMTask",
    "consistency": "genfm.experiments.tasks.consistency:ConsistencyTask",
    "autoencoder": "genfm.experiments.tasks.autoencoder:AutoencoderTask",
    "text2image": "genfm.experiments.tasks.text2image:Text2ImageTask",
    "controlnet": "genfm.experiments.tasks.controlnet:ControlNetTask",
    "personalize": "genfm.experiments.tasks.personalize:PersonalizeTask",
}


def get_task(config):
  """Instantiate the task named by `config.task`."""
  name = config.task
  if name not in TASKS:
    raise unknown_choice("config.task", name, TASKS)
  module, cls = TASKS[name].split(":")
  return getattr(importlib.import_module(module), cls)(config)
