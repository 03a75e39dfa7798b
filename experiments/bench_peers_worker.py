"""The peer side of `genfm-bench gpt_vs_nanogpt` (`bench_peers.py`): karpathy/nanoGPT's train
step, timed on request.

Runs under a *separate* Python with PyTorch (never a genfm dependency) and imports nanoGPT's own
`model.py` from `--nanogpt_dir` (a checkout; nothing of it is copied here). It speaks JSON lines
on stdin/stdout so the genfm side can alternate the two step by step in one run:

  {"cmd": "setup", "n_layer": 4, "n_head": 4, "n_embd": 128, "block_size": 64,
   "vocab_size": 84, "batch_size": 12, "bias": true, "lr": 1e-3, "weight_decay": 0.1,
   "betas": [0.9, 0.99], "grad_clip": 1.0, "threads": 2}   -> {"params": N, "torch": "2.13.0"}
  {"cmd": "time", "steps": 5}                               -> {"seconds": [t1, ..., t5], "loss": x}
  {"cmd": "quit"}

One step is nanoGPT's `train.py` inner iteration without the data loader and AMP (fp32 on the
CPU): forward with targets (logits and cross-entropy), backward, `clip_grad_norm_`, AdamW step
from `configure_optimizers` (decay on ≥2-D tensors only), `zero_grad(set_to_none=True)`. No
`torch.compile` (nanoGPT's CPU command passes --compile=False). The batch is fixed random
tokens: the step's cost does not depend on the data.
"""

import argparse
import json
import sys
import time


def main() -> None:
  parser = argparse.ArgumentParser()
  parser.add_argument("--nanogpt_dir", required=True)
  args = parser.parse_args()
  sys.path.insert(0, args.nanogpt_dir)
  import torch  # pylint: disable=g-import-not-at-top
  import model as nanogpt  # pylint: disable=g-import-not-at-top  # nanoGPT's model.py

  # nanoGPT prints its parameter counts: keep our stdout for the protocol alone.
  out_stream, sys.stdout = sys.stdout, sys.stderr
  state = {}

  def setup(msg):
    torch.manual_seed(0)
    torch.set_num_threads(int(msg["threads"]))
    cfg = nanogpt.GPTConfig(block_size=msg["block_size"], vocab_size=msg["vocab_size"],
                            n_layer=msg["n_layer"], n_head=msg["n_head"], n_embd=msg["n_embd"],
                            dropout=0.0, bias=msg["bias"])
    model = nanogpt.GPT(cfg)
    model.train()
    opt = model.configure_optimizers(msg["weight_decay"], msg["lr"], tuple(msg["betas"]), "cpu")
    tokens = torch.randint(0, msg["vocab_size"], (msg["batch_size"], msg["block_size"] + 1))
    state.update(model=model, opt=opt, x=tokens[:, :-1].contiguous(),
                 y=tokens[:, 1:].contiguous(), clip=msg["grad_clip"])
    return {"params": sum(p.numel() for p in model.parameters()), "torch": torch.__version__,
            "threads": torch.get_num_threads()}

  def step():
    model, opt = state["model"], state["opt"]
    _, loss = model(state["x"], state["y"])
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), state["clip"])
    opt.step()
    opt.zero_grad(set_to_none=True)
    return loss.item()  # the host reads the loss, as genfm's timing blocks on its result

  for line in sys.stdin:
    msg = json.loads(line)
    if msg["cmd"] == "quit":
      break
    if msg["cmd"] == "setup":
      out = setup(msg)
    else:
      seconds, loss = [], None
      for _ in range(int(msg["steps"])):
        t = time.perf_counter()
        loss = step()
        seconds.append(time.perf_counter() - t)
      out = {"seconds": seconds, "loss": loss}
    print(json.dumps(out), file=out_stream, flush=True)


if __name__ == "__main__":
  main()
