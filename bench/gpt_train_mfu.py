"""GPT-2-small training step (bf16 autocast) and its model FLOP utilisation (MFU).

    .venv/bin/python bench/gpt_train_mfu.py [--device cuda|cpu] [--dtype bf16|fp32] [--batch 16 --seq 1024]
            [--steps 20 --warmup 5] [--compile] [--peak-tflops T] [--threads N]
    .venv/bin/python bench/gpt_train_mfu.py --tiny --device cpu --steps 2 --warmup 1   # CPU smoke test

One step is what training does: forward (``attn_backend="torch"``, torch's fused SDPA),
``genlab.decoder.lm_loss``, backward, AdamW (``fused=True`` on CUDA), ``zero_grad(set_to_none=True)``,
on a fixed random batch. ``--dtype bf16`` runs forward and loss under ``torch.autocast`` bf16
(fp32 master weights; on CPU only a smoke test); ``fp32`` runs without autocast. Timing: the
median of ``--steps`` steps after ``--warmup`` (each synchronised on CUDA, ``bench/common.py``).

Model FLOPs per step (B x T tokens), counted two ways and both printed:

* analytic (PaLM, Chowdhery et al. 2022, appendix B): 6 N + 12 L T d per token, where 6 N
  is the forward + backward over the weights and 12 L T d the attention scores and weighted
  sum (all T x T pairs, causal masking not discounted). N here = every parameter but the
  position embeddings, with the token embedding counted once, as the tied LM head: its
  (V, d) matmul is real work (31% of GPT-2 small's weight FLOPs), while the embedding
  lookups are not matmuls. A strictly non-embedding N would leave the LM head out.
* measured: ``torch.utils.flop_counter.FlopCounterMode`` over one forward + backward of the
  same model (uncompiled): matmuls (mm, addmm, bmm) and the fused attention kernels, also
  over all T x T pairs. torch's table lacks the CPU flash kernel, so it is added here with
  torch's own SDPA formulas. Elementwise work, LayerNorm, softmax, GELU, cross-entropy and
  the optimizer are not counted (by either).

The two agree exactly on the weight matmuls (blocks 72 L d^2 and LM head 6 d V per token)
and differ, by construction, in two places: N includes the biases and LayerNorms (6 x
13 L d + 2 d per token, which no matmul sees), and torch's SDPA backward formula counts the
recomputation of Q K^T that the fused kernels do (5 products of the forward's size in the
backward, against 4), so its attention is 14 L T d per token, 7/6 of PaLM's. The MFU uses
the analytic count (model FLOPs); the measured count's TFLOPS is printed beside it.

Peak (dense bf16 Tensor Core, no 2:4 sparsity; NVIDIA's datasheets print the sparse figure,
twice these): H200 and H100 SXM 989.4 TFLOPS, A100 312 TFLOPS. Any other device, the PCIe
and NVL parts, ``--dtype fp32`` and the CPU: MFU n/a unless ``--peak-tflops`` is given.

Target (issue: GPT-2 small, bf16, H200): MFU >= 40% of the bf16 peak.
"""

from __future__ import annotations

import argparse
import sys
from contextlib import nullcontext
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode, sdpa_backward_flop_count, sdpa_flop_count

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, median_seconds, table  # noqa: E402

from genlab.decoder import GPT, GPTConfig, lm_loss  # noqa: E402

CONFIGS = {  # GPT-2 small (124M), and a toy for the CPU smoke test
    "small": dict(vocab_size=50257, n_positions=1024, n_embd=768, n_layer=12, n_head=12),
    "tiny": dict(vocab_size=512, n_positions=64, n_embd=64, n_layer=2, n_head=4),
}
# dense bf16 Tensor Core TFLOPS by a substring of torch.cuda.get_device_name; first match wins
PEAK_BF16_TFLOPS = (("H100 PCIe", None), ("H100 NVL", None), ("H200 NVL", None),
                    ("H200", 989.4), ("H100", 989.4), ("A100", 312.0))
TARGET_MFU = 0.40
PARTS = {"blocks": "block weight matmuls (72 L d^2)", "lm_head": "LM head (6 d V)",
         "biases_norms": "biases + LayerNorms (in 6N)", "attention": "attention (12 L T d; torch 14 L T d)",
         "total": "total"}
ATTENTION_OPS = ("aten._scaled_dot_product", "aten._flash_attention", "aten._efficient_attention")


def peak_tflops(device: torch.device, dtype: str, override: float | None) -> float | None:
    """The peak the MFU divides by: ``--peak-tflops``, else the bf16 table on CUDA, else None."""
    if override is not None:
        return override
    if device.type != "cuda" or dtype != "bf16":
        return None
    name = torch.cuda.get_device_name(device)
    return next((peak for key, peak in PEAK_BF16_TFLOPS if key in name), None)


def analytic_flops(config: GPTConfig, tokens: int, seq: int) -> dict[str, int]:
    """Model FLOPs per step by PaLM's formula, 6 N + 12 L T d per token, split into parts."""
    L, d, V = config.n_layer, config.n_embd, config.vocab_size
    inner = config.n_inner or 4 * d
    weights = L * (4 * d * d + 2 * d * inner)  # c_attn (d, 3d), attn.c_proj, c_fc, mlp.c_proj
    small = L * (3 * d + d + inner + d + 4 * d) + 2 * d  # their biases; ln_1, ln_2, ln_f
    n_params = weights + small + V * d  # + the tied wte / LM head, counted once
    parts = {"blocks": 6 * weights * tokens, "lm_head": 6 * V * d * tokens,
             "biases_norms": 6 * small * tokens, "attention": 12 * L * seq * d * tokens}
    return {**parts, "total": sum(parts.values()), "N": n_params}


def _attention_mapping() -> dict:
    """FlopCounterMode's table lacks the CPU flash kernel; count it with torch's SDPA formulas."""
    def forward(query, key, value, *args, out_shape=None, **kwargs):
        return sdpa_flop_count(query, key, value)

    def backward(grad_out, query, key, value, *args, out_shape=None, **kwargs):
        return sdpa_backward_flop_count(grad_out, query, key, value)

    aten = torch.ops.aten
    if not hasattr(aten, "_scaled_dot_product_flash_attention_for_cpu"):
        return {}
    return {aten._scaled_dot_product_flash_attention_for_cpu: forward,
            aten._scaled_dot_product_flash_attention_for_cpu_backward: backward}


def counted_flops(model: GPT, input_ids: torch.Tensor, autocast) -> dict[str, int]:
    """FlopCounterMode over one forward + backward, split into blocks / LM head / attention."""
    with FlopCounterMode(display=False, custom_mapping=_attention_mapping()) as counter:
        with autocast():
            loss = lm_loss(model(input_ids), input_ids)
        loss.backward()
    model.zero_grad(set_to_none=True)
    counts = counter.get_flop_counts()
    everything = counts["Global"]
    attention = sum(n for op, n in everything.items() if str(op).startswith(ATTENTION_OPS))
    head = sum(counts.get("GPT.lm_head", {}).values())
    total = counter.get_total_flops()
    # "blocks" is the rest, every other counted op; the test checks it is the blocks' weight matmuls
    return {"blocks": total - head - attention, "lm_head": head, "biases_norms": 0,
            "attention": attention, "total": total}


def main(argv: list[str] | None = None) -> dict[str, float | None]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=("bf16", "fp32"), default="bf16",
                        help="bf16 = torch.autocast bf16 (fp32 weights); on CPU a smoke test only")
    parser.add_argument("--config", choices=sorted(CONFIGS), default="small")
    parser.add_argument("--tiny", action="store_true",
                        help="--config tiny: 2 layers, d=64, vocab 512, T=64, batch 2 (CPU smoke test)")
    parser.add_argument("--batch", type=int, default=None, help="default 16 (small), 2 (tiny)")
    parser.add_argument("--seq", type=int, default=None, help="default: the config's n_positions")
    parser.add_argument("--steps", type=int, default=20, help="timed steps (median)")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--compile", action="store_true", help="time torch.compile(model)")
    parser.add_argument("--peak-tflops", type=float, default=None,
                        help="peak the MFU divides by (default: the dense bf16 table, CUDA + bf16 only)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    args = parser.parse_args(argv)
    if args.tiny:
        args.config = "tiny"
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    config = GPTConfig(**CONFIGS[args.config], attn_backend="torch")
    B = args.batch or (2 if args.config == "tiny" else 16)
    T = args.seq or config.n_positions
    if not 1 < T <= config.n_positions:
        parser.error(f"--seq must be in 2..{config.n_positions}")
    tokens = B * T

    def autocast():
        if args.dtype == "fp32":
            return nullcontext()
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)

    model = GPT(config).to(device).train()
    generator = torch.Generator().manual_seed(0)
    input_ids = torch.randint(0, config.vocab_size, (B, T), generator=generator).to(device)
    formula = analytic_flops(config, tokens, T)
    measured = counted_flops(model, input_ids, autocast)
    runner = torch.compile(model) if args.compile else model
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-4, weight_decay=0.1,
                                  fused=device.type == "cuda")

    def step():
        with autocast():
            loss = lm_loss(runner(input_ids), input_ids)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    seconds = median_seconds({"step": step}, device, warmup=args.warmup, repeats=args.steps)["step"]
    peak = peak_tflops(device, args.dtype, args.peak_tflops)
    achieved = formula["total"] / seconds / 1e12
    mfu = None if peak is None else achieved / peak

    print(f"# GPT training step, config {args.config} (L={config.n_layer} d={config.n_embd} "
          f"H={config.n_head} V={config.vocab_size}), B={B} T={T}, {args.dtype}"
          f"{', torch.compile' if args.compile else ''}, median of {args.steps} after {args.warmup} "
          f"warm-up, {machine(device)}")
    print(f"N = {formula['N']:,} parameters (all but wpe; wte once, as the tied LM head)")
    print(table([(label, f"{formula[part]:,}", f"{measured[part]:,}") for part, label in PARTS.items()],
                header=("model FLOPs per step", "analytic (6N + 12LTd)", "FlopCounterMode")))
    print(f"analytic / FlopCounterMode total: {formula['total'] / measured['total']:.4f} (biases and "
          f"LayerNorms are in 6N only; FlopCounterMode's attention backward adds the recomputed "
          f"Q K^T, 14 L T d against 12 L T d per token)")
    rows = [("ms/step", f"{seconds * 1e3:.1f}"), ("tokens/s", f"{tokens / seconds:,.0f}"),
            ("TFLOPS achieved (analytic)", f"{achieved:.3f}"),
            ("TFLOPS achieved (FlopCounterMode)", f"{measured['total'] / seconds / 1e12:.3f}"),
            ("peak TFLOPS", "n/a" if peak is None else f"{peak:g}"),
            ("MFU", "n/a" if mfu is None else f"{mfu:.1%}")]
    if device.type == "cuda":
        rows.append(("peak memory", f"{torch.cuda.max_memory_allocated(device) / 2**30:.2f} GiB"))
    print(table(rows, header=("measure", "value")))
    if device.type == "cuda" and mfu is not None:
        print(f"target MFU >= {TARGET_MFU:.0%}: {'met' if mfu >= TARGET_MFU else 'MISSED'} ({mfu:.1%})")
    return {"seconds": seconds, "tflops": achieved, "mfu": mfu, "analytic": formula["total"],
            "measured": measured["total"]}


if __name__ == "__main__":
    main()
