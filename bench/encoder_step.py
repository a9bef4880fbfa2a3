"""Encoder training step (forward + backward, fp32): genlab's BERT against transformers'
BertModel and torch.nn.TransformerEncoder at the same configuration, in one run.

    .venv/bin/python bench/encoder_step.py [--device cpu|cuda] [--batch 16 --seq 128 --dim 256 --layers 4]

Target: genlab at least as fast as both (ratio = peer time / genlab time >= 1).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn as nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, median_seconds, table  # noqa: E402

from genlab.encoder import BertConfig, BertModel  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()
    device = torch.device(args.device)
    B, T, d = args.batch, args.seq, args.dim
    config = BertConfig(vocab_size=1000, hidden_size=d, num_hidden_layers=args.layers,
                        num_attention_heads=args.heads, intermediate_size=4 * d,
                        max_position_embeddings=max(512, T), hidden_dropout_prob=0.0,
                        attention_probs_dropout_prob=0.0, attn_backend="torch")
    g = torch.Generator().manual_seed(0)
    input_ids = torch.randint(5, 1000, (B, T), generator=g).to(device)
    attention_mask = torch.ones(B, T, dtype=torch.long, device=device)

    import transformers

    hf_config = transformers.BertConfig(
        vocab_size=1000, hidden_size=d, num_hidden_layers=args.layers, num_attention_heads=args.heads,
        intermediate_size=4 * d, max_position_embeddings=max(512, T), hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0)
    hf_config._attn_implementation = "sdpa"
    hf = transformers.BertModel(hf_config, add_pooling_layer=True).to(device).train()
    ours = BertModel.from_hf(hf, attn_backend="torch").to(device).train()
    embed = nn.Embedding(1000, d).to(device)
    layer = nn.TransformerEncoderLayer(d, args.heads, 4 * d, dropout=0.0, activation="gelu",
                                       batch_first=True, norm_first=False, layer_norm_eps=1e-12)
    torch_encoder = nn.TransformerEncoder(layer, args.layers, enable_nested_tensor=False).to(device).train()

    def step_ours():
        hidden, pooled = ours(input_ids, attention_mask=attention_mask)
        (hidden.float().square().mean() + pooled.float().mean()).backward()

    def step_hf():
        out = hf(input_ids=input_ids, attention_mask=attention_mask)
        (out.last_hidden_state.square().mean() + out.pooler_output.mean()).backward()

    def step_torch():
        hidden = torch_encoder(embed(input_ids))
        hidden.square().mean().backward()

    times = median_seconds({"genlab BertModel": step_ours, "transformers BertModel": step_hf,
                            "torch.nn.TransformerEncoder": step_torch}, device, repeats=args.repeats)
    ours_t = times["genlab BertModel"]
    print(f"# encoder training step, B={B} T={T} d={d} layers={args.layers} heads={args.heads}, fp32, "
          f"{machine(device)}")
    print(table([(name, f"{t * 1e3:.1f} ms", f"{t / ours_t:.2f}x") for name, t in times.items()],
                header=("implementation", "median step", "peer / genlab")))
    for peer in ("transformers BertModel", "torch.nn.TransformerEncoder"):
        verdict = "met" if times[peer] >= ours_t else "MISSED"
        print(f"target genlab <= {peer}: {verdict} (ratio {times[peer] / ours_t:.2f})")


if __name__ == "__main__":
    main()
