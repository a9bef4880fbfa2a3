"""scGPT training step (forward + backward + loss) with the known/unknown mask: genlab's
single-sequence ``ScGPT`` (one attention call per layer on [<cls>, known; unknown]) against
``TwoStreamScGPT`` (the same weights, computed the way upstream scGPT structures it), on the
same inputs, in one run. A third row runs the single sequence under the (T, T)
``known_unknown_mask`` through torch's fused SDPA (what ``ScGPT`` did before its default
backend moved to the K+1-key self slot, ``genlab.scgpt.known_unknown_attention``).

    .venv/bin/python bench/scgpt_step.py [--device cpu|cuda] [--dtype fp32|bf16]
            [--batch 4 --genes 1200 --fractions 0.5 --dim 64 --layers 2 --heads 4 --ff 128] [--threads N]

Every cell has ``--genes`` real genes (no padding); ``round(fraction * genes)`` of them are
unknown. The loss is the GEP pass of ``genlab.scgpt.scgpt_losses``: masked MSE of the value
head and of the GEPC head on the unknown genes plus 0.1 x the confidence head's Gaussian NLL
(``scgpt_losses`` itself needs a ``ScGPT``, and the two-stream wrapper is not one). The
defaults are the pbmc experiment's FULL model (d=64, 2 layers, 4 heads, d_ff=128) at 1,200
genes per cell, batch 4. Before timing, the outputs and the gradients of the two are compared
(max abs diff). ``--dtype bf16`` (CUDA only) runs both under bf16 autocast.

Target: the single-sequence model at least as fast as the two-stream one
(ratio = two-stream time / single-sequence time >= 1).
"""

from __future__ import annotations

import argparse
import sys
from contextlib import nullcontext
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, median_seconds, table  # noqa: E402

from genlab.scgpt import (  # noqa: E402
    ScGPT,
    ScGPTConfig,
    TwoStreamScGPT,
    gaussian_nll,
    masked_mse,
    split_known_unknown,
)

OUTPUTS = ("cell_embedding", "value", "log_var", "cell_value")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def build(args, device: torch.device):
    """The model and its two-stream wrapper (same parameters), both in training mode."""
    config = ScGPTConfig(vocab_size=args.genes + 2, d_model=args.dim, n_heads=args.heads,
                         n_layers=args.layers, d_ff=args.ff, attention_backend=args.backend)
    model = ScGPT(config).to(device).train()
    return model, TwoStreamScGPT(model).train()


def make_cells(args, fraction: float, device: torch.device):
    """A batch of cells with ``--genes`` real genes each, split at ``fraction`` unknown."""
    g = torch.Generator().manual_seed(0)
    B, L = args.batch, args.genes
    gene_ids = torch.stack([torch.randperm(L, generator=g) + 2 for _ in range(B)])  # (B, L)
    values = torch.randint(0, 51, (B, L), generator=g).float()  # bins
    is_real = torch.ones(B, L, dtype=torch.bool)
    return split_known_unknown(gene_ids, values, is_real, fraction, g).to(device)


def loss_of(out, cells, scale: float) -> torch.Tensor:
    """The GEP pass of ``scgpt_losses``: GEP + GEPC masked MSE + 0.1 x confidence NLL."""
    target, real = cells.unknown_values, cells.unknown_is_real
    gep = masked_mse(out.value.float() / scale, target / scale, real)
    gepc = masked_mse(out.cell_value.float() / scale, target / scale, real)
    nll = gaussian_nll(out.value.detach().float(), out.log_var.float(), target, real)
    return gep + gepc + 0.1 * nll


def masked_forward(model: ScGPT):
    """``model.forward`` with the (B, 1, T, T) ``known_unknown_mask`` (+ padding) through the
    layers' own attention (fused SDPA for the "torch" backend) instead of the self slot."""
    def forward(known_genes, known_values, unknown_genes, known_is_real, unknown_is_real, cell_prompt=None):
        cls, known, unknown = model.embed_tokens(known_genes, known_values, unknown_genes, cell_prompt)
        P = known.size(1)
        x = torch.cat([cls, known, unknown], dim=1)  # (B, T, C)
        mask = model.attention_mask(known_is_real, unknown_is_real)  # (B, 1, T, T)
        for layer in model.layers:
            x = layer(x, mask)
        x = model.final_norm(x)
        return model.heads(x[:, 0], x[:, 1 + P:], unknown_genes, hidden=x)
    return forward


def outputs_and_gradients(model, impl, cells, autocast):
    model.zero_grad(set_to_none=True)
    with autocast():
        out = impl(**cells.model_inputs())
        loss = loss_of(out, cells, model.config.value_scale)
    loss.backward()
    grads = {name: p.grad.detach().float().clone() for name, p in model.named_parameters()
             if p.grad is not None}
    model.zero_grad(set_to_none=True)
    return {name: getattr(out, name).detach().float() for name in OUTPUTS}, loss.detach().float(), grads


def max_differences(model, reference, other, cells, autocast) -> dict[str, float]:
    """Max abs differences of outputs, loss and parameter gradients between two implementations."""
    results = []
    for impl in (reference, other):
        results.append(outputs_and_gradients(model, impl, cells, autocast))
    (outs_a, loss_a, grads_a), (outs_b, loss_b, grads_b) = results
    diffs = {name: (outs_a[name] - outs_b[name]).abs().max().item() for name in OUTPUTS}
    diffs["loss"] = (loss_a - loss_b).abs().item()
    if grads_a.keys() != grads_b.keys():
        raise SystemExit(f"the two implementations train different parameters: "
                         f"{sorted(grads_a.keys() ^ grads_b.keys())}")
    diffs["gradients"] = max((grads_a[n] - grads_b[n]).abs().max().item() for n in grads_a)
    return diffs


def main(argv: list[str] | None = None) -> dict[float, dict[str, float]]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="fp32",
                        help="bf16 = bf16 autocast, CUDA only")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--genes", type=int, default=1200, help="genes per cell (known + unknown)")
    parser.add_argument("--fractions", type=float, nargs="+", default=[0.5],
                        help="unknown fractions to measure, e.g. 0.25 0.5 0.75")
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--ff", type=int, default=128)
    parser.add_argument("--backend", choices=("torch", "scratch"), default="torch",
                        help="ScGPTConfig.attention_backend of the single-sequence model")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--tolerance", type=float, default=None,
                        help="largest max abs diff accepted (default 1e-3 fp32, 0.5 bf16)")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    if not all(0 < f <= 1 for f in args.fractions):
        parser.error("each unknown fraction must be in (0, 1]: the loss is over the unknown genes")
    if args.dtype == "bf16" and device.type != "cuda":
        parser.error("--dtype bf16 is for CUDA; the CPU runs fp32")
    tolerance = args.tolerance if args.tolerance is not None else (1e-3 if args.dtype == "fp32" else 0.5)

    def autocast():
        if args.dtype == "fp32":
            return nullcontext()
        return torch.autocast(device_type=device.type, dtype=DTYPES[args.dtype])

    model, two_stream = build(args, device)
    scale = model.config.value_scale
    SINGLE, TWO, MASK = ("single sequence (ScGPT)", "two-stream (TwoStreamScGPT)",
                         "single sequence, (T, T) mask")
    impls = {SINGLE: model, TWO: two_stream}
    if args.backend == "torch":
        impls[MASK] = masked_forward(model)
    print(f"# scGPT training step (forward + backward + loss), B={args.batch}, {args.genes} genes/cell, "
          f"d={args.dim} layers={args.layers} heads={args.heads} d_ff={args.ff}, "
          f"attention backend {args.backend!r}, {args.dtype}, {machine(device)}")
    results: dict[float, dict[str, float]] = {}
    for fraction in args.fractions:
        cells = make_cells(args, fraction, device)
        P, G = cells.known_genes.size(1), cells.unknown_genes.size(1)
        print(f"\n## unknown fraction {fraction}: {P} known + {G} unknown genes (+ <cls>)")
        for name, impl in impls.items():
            if impl is model:
                continue
            diffs = max_differences(model, model, impl, cells, autocast)
            print(f"max abs diff, ScGPT vs {name}: " + ", ".join(f"{k} {d:.1e}" for k, d in diffs.items()))
            worst = max(diffs.values())
            if not worst <= tolerance:
                raise SystemExit(f"the implementations disagree: max abs diff {worst:.3g} > {tolerance:g}")

        def step(impl):
            def run():
                model.zero_grad(set_to_none=True)
                with autocast():
                    loss = loss_of(impl(**cells.model_inputs()), cells, scale)
                loss.backward()
            return run

        times = median_seconds({name: step(impl) for name, impl in impls.items()}, device,
                               warmup=args.warmup, repeats=args.repeats)
        ours = times[SINGLE]
        genes = args.batch * args.genes
        print(table([(name, f"{t * 1e3:.1f} ms", f"{genes / t:,.0f} genes/s", f"{t / ours:.2f}x")
                     for name, t in times.items()],
                    header=("implementation", "median step", "throughput", "time / ScGPT")))
        ratio = times[TWO] / ours
        print(f"target ScGPT <= two-stream: {'met' if ratio >= 1 else 'MISSED'} (ratio {ratio:.2f})")
        results[fraction] = times
    return results


if __name__ == "__main__":
    main()
