"""The bench entry point: JSON lines whose FLOP counts agree with a hand count."""

import json

from genfm.experiments import bench


def test_matmul_peak_and_mlp_step_report_consistent_flops(capsys):
  assert bench.main(["matmul_peak", "mlp_train_step"]) == 0
  peak, mlp = [json.loads(l) for l in capsys.readouterr().out.splitlines()]
  n = peak["shape"][0]
  assert abs(peak["flops_per_sec"] * peak["seconds"] - 2 * n**3) / (2 * n**3) < 1e-9
  # MLP 784-512-256-10 at batch B: forward 2·B·W FLOPs (W = weights), weight gradients 2·B·W,
  # input gradients 2·B·(W − 784·512) (none needed for the data), plus a few % elementwise.
  weights = 784 * 512 + 512 * 256 + 256 * 10
  hand = 2 * mlp["batch_size"] * (3 * weights - 784 * 512)
  assert 1.0 * hand < mlp["flops_per_step"] < 1.1 * hand, (mlp["flops_per_step"], hand)
  assert 0 < mlp["fraction_of_matmul_peak"] < 2


def test_unknown_benchmark_names_the_valid_ones(capsys):
  assert bench.main(["nope"]) == 2
  err = capsys.readouterr().err
  assert "unknown benchmark" in err and "matmul_peak" in err


def test_image_sample_rows_count_two_unet_evals_per_guided_step(monkeypatch):
  """The U-Net rows of `diffusion_sample` on the smoke U-Net (8×8 digits) with short samplers:
  a guided step costs one U-Net call on 2B images (conditional + null label), so the reported
  FLOPs per call = NFE × FLOPs(U-Net at 2B), counted independently here; seconds and samples/s
  agree."""
  import jax
  import jax.numpy as jnp
  from flax import nnx

  from genfm.experiments import bench_diffusion
  from genfm.experiments.configs import fashion_ddpm
  from genfm.experiments.tasks.diffusion_image import DiffusionImageTask

  cfg = fashion_ddpm.get_config("smoke")
  cfg.fid_classifier_workdir = ""
  task = DiffusionImageTask(cfg)
  monkeypatch.setattr(bench_diffusion, "_image_task", lambda: (task, "fashion_ddpm:smoke"))
  monkeypatch.setattr(bench_diffusion, "image_batches", lambda: (4, 3))
  monkeypatch.setattr(bench_diffusion, "IMAGE_SAMPLERS",
                      (("ddim_2", "ddim", 2, 2), ("dpm_solver_pp_3", "dpm_solver_pp", 3, 3)))
  rows = []
  bench_diffusion.image_sample(rows.append, peak=1e11)

  model = task.build_model(nnx.Rngs(0))
  model.eval()
  graphdef, state = nnx.split(model)
  unet = jax.jit(lambda s, x, t, y: nnx.merge(graphdef, s)(x, t, y))
  b2 = 2 * 3
  one_eval = bench.compiled_flops(unet, state, jnp.zeros((b2, *task.image_shape)),
                                  jnp.zeros((b2,), jnp.int32), jnp.zeros((b2,), jnp.int32))
  assert [r["sampler"] for r in rows] == ["ddim_2", "dpm_solver_pp_3"]
  for r, nfe in zip(rows, (2, 3)):
    assert r["network_evals"] == nfe and r["batch_size"] == 3
    assert abs(r["flops_per_call"] / (nfe * one_eval) - 1) < 0.05, (r, one_eval)
    assert abs(r["samples_per_sec"] * r["seconds"] - 3) < 1e-9


def test_partial_train_step_reports_optimizer_bytes_of_the_trainable_part(capsys, monkeypatch):
  """gpt_partial_train_step: AdamW's state is two fp32 moments (+ a count) of the trainable part
  only, so its bytes scale exactly with the trainable count; the frozen layers' backward is not
  computed (fewer XLA FLOPs). Timed with 1 iteration here: the bench's contract, not a speed."""
  from genfm.experiments import bench_lm  # pylint: disable=g-import-not-at-top
  real_time_fn = bench.time_fn
  monkeypatch.setattr(bench, "time_fn", lambda fn, *a, **k: real_time_fn(fn, *a, warmup=1, iters=1))
  monkeypatch.setattr(bench, "matmul_peak", lambda: {"name": "matmul_peak", "flops_per_sec": 1.0})
  bench_lm.gpt_partial_train_step(bench.emit)
  rows = [json.loads(l) for l in capsys.readouterr().out.splitlines()][1:]
  full, part = rows
  assert full["trained"] == "full" and part["trained"] == "last_layer_only"
  assert full["trainable_params"] == full["params"] == part["params"] == 812_288
  assert part["trainable_params"] == 4 * 128 * 128 + 4 * 128 + 2 * 128 * 512 + 512 + 128 + 4 * 128
  for r in rows:   # μ and ν in fp32, plus count scalars of a few bytes
    assert 0 <= r["optimizer_state_bytes"] - 8 * r["trainable_params"] < 64, r
  assert part["xla_flops_per_step"] < 0.6 * full["xla_flops_per_step"]


def test_lora_bench_reports_the_savings_it_claims(capsys, monkeypatch):
  """genfm-bench lora on a small shape: LoRA / QLoRA train r(d_in + d_out) per W_q, W_v with
  AdamW moments of those only; QLoRA's model bytes are below LoRA's (NF4 base); the stored base
  is ≈ 4.127 bits per weight; the merged-forward row is there. 1 timing iteration: a contract."""
  from genfm.experiments import bench_peft  # pylint: disable=g-import-not-at-top
  from genfm.transformers import gpt  # pylint: disable=g-import-not-at-top
  real_time_fn = bench.time_fn
  monkeypatch.setattr(bench, "time_fn", lambda fn, *a, **k: real_time_fn(fn, *a, warmup=1, iters=1))
  monkeypatch.setattr(bench, "matmul_peak", lambda: {"name": "matmul_peak", "flops_per_sec": 1.0})
  small = gpt.GPTConfig(vocab_size=97, context_len=32, num_layers=2, d_model=128, num_heads=4)
  monkeypatch.setattr(bench_peft, "GPT2_SMALL", small)
  monkeypatch.setattr(bench_peft, "NF4_MATMUL_CPU", (64, 256, 1024))   # 64·256 | 256·1024
  bench_peft.lora_bench(bench.emit)
  rows = {r.get("method", r["name"]): r
          for r in (json.loads(l) for l in capsys.readouterr().out.splitlines())}
  full, lora, qlora = rows["full"], rows["lora"], rows["qlora"]
  assert lora["trainable_params"] == qlora["trainable_params"] == 2 * 2 * 8 * (128 + 128)
  for r in (full, lora, qlora):
    assert 0 <= r["optimizer_state_bytes"] - 8 * r["trainable_params"] < 64, r
  assert qlora["model_bytes"] < lora["model_bytes"] < 1.05 * full["model_bytes"]
  assert abs(rows["nf4_storage"]["bits_per_param_double_quant"] - 4.127) < 1e-3
  assert rows["nf4_storage"]["bits_per_param_single"] == 4.5
  assert {"merged_vs_base", "unmerged_vs_base"} <= set(rows["lora_merged_forward"])


def test_rl_bench_rows_add_up(capsys, monkeypatch):
  """genfm-bench rl on a tiny model: one rollout row per group size with tokens/s = rows · new
  tokens / seconds, and a GRPO step whose parts' shares sum to 1. 1 timing iteration: a contract."""
  from genfm.experiments import bench_rl  # pylint: disable=g-import-not-at-top
  from genfm.transformers import gpt  # pylint: disable=g-import-not-at-top
  real_time_fn = bench.time_fn
  monkeypatch.setattr(bench, "time_fn", lambda fn, *a, **k: real_time_fn(fn, *a, warmup=1, iters=1))
  monkeypatch.setattr(bench_rl, "MODEL", gpt.GPTConfig(vocab_size=31, context_len=24,
                                                       num_layers=1, d_model=32, num_heads=2))
  monkeypatch.setattr(bench_rl, "PROMPT_LEN", 8)
  monkeypatch.setattr(bench_rl, "GROUPS", (2,))
  bench_rl.rl_bench(bench.emit)
  rows = [json.loads(l) for l in capsys.readouterr().out.splitlines()]
  rollouts = [r for r in rows if r["name"] == "rl_rollout"]
  assert [r["group_size"] for r in rollouts] == [2]
  for r in rollouts:
    assert r["rows"] == 8 * r["group_size"]
    assert abs(r["tokens_per_sec"] * r["cached_seconds"] - r["rows"] * 12) < 1e-6 * r["rows"]
  step = next(r for r in rows if r["name"] == "rl_step")
  assert abs(step["rollout_share"] + step["logprob_share"] + step["update_share"] - 1) < 1e-9
