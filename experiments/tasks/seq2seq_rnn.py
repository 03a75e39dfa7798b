"""Toy translation (written dates → ISO 8601) with the RNN encoder–decoder of Bahdanau, Cho &
Bengio 2014, arXiv:1409.0473 (`foundations/seq2seq_attention.py`), with or without attention.

Same data, held-out split, teacher-forced loss and `validation_exact_match` (greedy) as the T5
task (`tasks/seq2seq.py`), so the numbers compare directly. Added: `validation_beam_exact_match`
(beam search of width `config.beam_width` over the whole validation set, in `after_eval`), the
alignment heatmaps `workdir/alignment_step{N}.png` (α_ij: source characters × decoded target
characters, one held-out date per source format; attention models only) and the decoded samples
`workdir/samples_step{N}.txt` (greedy and beam).

config.model: embed_dim (R), hidden_dim (D), attention_dim (A), maxout_dim (O), use_attention.
The RNN reads sources of any length: there is no maximum source length to check.
"""

import os

import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from genfm.experiments.errors import ConfigError
from genfm.experiments.tasks.base import Batch
from genfm.experiments.tasks.seq2seq import FORMATS, PAD, START, Seq2SeqTask
from genfm.foundations import seq2seq_attention as s2s

MODEL_FIELDS = ("embed_dim", "hidden_dim", "attention_dim", "maxout_dim", "use_attention")


class RNNSeq2SeqTask(Seq2SeqTask):
  """Dates → ISO with `AttentionSeq2Seq` (RNNsearch, or RNNencdec when use_attention=False)."""

  def __init__(self, config):
    super().__init__(config)
    bw = config.get("beam_width", 4)
    if not isinstance(bw, int) or bw < 0:
      raise ConfigError(f"config.beam_width must be an integer >= 0 (0 skips beam search), "
                        f"got {bw!r}")
    self.beam_width = bw

  @staticmethod
  def _t5_config(config, vocab_size: int) -> dict:
    """Overrides the parent's model-config hook (called from its __init__): the RNN's fields."""
    given = set(config.model.keys())
    unknown, missing = sorted(given - set(MODEL_FIELDS)), sorted(set(MODEL_FIELDS) - given)
    if unknown or missing:
      raise ConfigError(f"config.model for seq2seq_rnn needs exactly {', '.join(MODEL_FIELDS)}; "
                        f"unknown {unknown}, missing {missing}")
    cfg = dict(config.model)
    for k in MODEL_FIELDS[:-1]:
      if not isinstance(cfg[k], int) or cfg[k] < 1:
        raise ConfigError(f"config.model.{k} must be a positive integer, got {cfg[k]!r}")
    cfg["use_attention"] = bool(cfg["use_attention"])
    return {"src_vocab": vocab_size, "tgt_vocab": vocab_size, **cfg}

  def build_model(self, rngs: nnx.Rngs) -> nnx.Module:
    return s2s.AttentionSeq2Seq(**self.model_config, rngs=rngs)

  def _forced(self, model, batch: Batch):
    src_BS = batch["source"]
    logits_BTV, _ = model(src_BS, batch["decoder_inputs"], src_BS != PAD)
    targets_BT = batch["targets"]
    ce_BT = optax.softmax_cross_entropy_with_integer_labels(logits_BTV, targets_BT)
    correct_BT = (jnp.argmax(logits_BTV, -1) == targets_BT).astype(jnp.float32)
    return ce_BT, correct_BT, (targets_BT != PAD).astype(jnp.float32)

  def eval_metrics(self, model, batch: Batch):
    ce_BT, correct_BT, w_BT = self._forced(model, batch)
    src_BS = batch["source"]
    tokens_BT, _ = s2s.greedy_decode(model, src_BS, src_BS != PAD, self.tgt_len, start_id=START)
    targets_BT = batch["targets"]
    exact_B = _exact(tokens_BT, targets_BT)
    mask_B = batch["mask"]
    per_ex = lambda x_BT: jnp.sum(x_BT * w_BT, 1) / jnp.maximum(jnp.sum(w_BT, 1), 1.0)
    return {"exact_match": jnp.sum(exact_B * mask_B), "loss": jnp.sum(per_ex(ce_BT) * mask_B),
            "token_accuracy": jnp.sum(per_ex(correct_BT) * mask_B), "count": jnp.sum(mask_B)}

  def after_eval(self, model, workdir: str, step: int) -> dict[str, float]:
    src_NS = jnp.asarray(self._eval.arrays["source"])
    targets_NT = jnp.asarray(self._eval.arrays["targets"])
    greedy_NT, alpha_NTS = _greedy(model, src_NS, src_NS != PAD, self.tgt_len, start_id=START)
    out, beam_NT = {}, None
    if self.beam_width:
      beams_NWT, _ = s2s.beam_decode(model, src_NS, src_NS != PAD, self.tgt_len, start_id=START,
                                     beam_width=self.beam_width)
      beam_NT = beams_NWT[:, 0]
      out["validation_beam_exact_match"] = float(jnp.mean(_exact(beam_NT, targets_NT)))
    n = min(self.config.get("num_samples", 8), len(self.eval_pairs))
    lines = []
    for i, (src, want) in enumerate(self.eval_pairs[:n]):
      got = self.decode(greedy_NT[i])
      line = f"{src!r:>22} -> greedy {got!r} {'ok' if got == want else f'(want {want!r})'}"
      if beam_NT is not None:
        line += f" | beam {self.decode(beam_NT[i])!r}"
      lines.append(line)
    with open(os.path.join(workdir, f"samples_step{step}.txt"), "w", encoding="utf-8") as f:
      f.write(f"# step {step}, greedy and beam (width {self.beam_width}) decoding\n"
              + "\n".join(lines) + "\n")
    if self.model_config["use_attention"]:
      k = min(len(FORMATS), len(self.eval_pairs))  # eval pairs cycle through the formats
      save_alignments(os.path.join(workdir, f"alignment_step{step}.png"),
                      [s for s, _ in self.eval_pairs[:k]],
                      [self.decode(greedy_NT[i]) for i in range(k)],
                      np.asarray(alpha_NTS[:k]), title=f"step {step}")
    return out


_greedy = nnx.jit(s2s.greedy_decode, static_argnames=("max_len", "start_id"))


def _exact(tokens_BT, targets_BT):
  """Every target position up to and including <end> right (pads after it ignored)."""
  return jnp.all((tokens_BT == targets_BT) | (targets_BT == PAD), axis=1)


def save_alignments(path: str, sources: list[str], outputs: list[str], alpha_NTS: np.ndarray,
                    title: str = "") -> str:
  """One α heatmap per example: rows the decoded characters (+ <end>), columns the source."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")                        # headless
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  fig, axes = plt.subplots(1, len(sources), figsize=(3.2 * len(sources), 3.4), squeeze=False)
  for ax, src, got, a_TS in zip(axes[0], sources, outputs, alpha_NTS):
    rows = (list(got) + ["</s>"])[:a_TS.shape[0]]
    ax.imshow(a_TS[:len(rows), :len(src)], cmap="gray_r", vmin=0.0, vmax=1.0, aspect="auto")
    ax.set_xticks(range(len(src)))
    ax.set_xticklabels(list(src), fontsize=7)
    ax.set_yticks(range(len(rows)))
    ax.set_yticklabels(rows, fontsize=7)
    ax.set_title(repr(src), fontsize=8)
  fig.suptitle(f"attention weights α_ij (1409.0473 eq. (5)), {title}", fontsize=9)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)
  return path
