"""A Llama-style decoder: genlab's GPT (rmsnorm, rotary, swiglu, grouped-query attention,
untied head) against transformers' LlamaForCausalLM at the same configuration and weights,
in one run: a training step (forward + backward + AdamW step, fp32) and greedy generation
with the KV cache (``generate``).

    .venv/bin/python bench/llama_step.py [--device cpu|cuda] [--threads 1]
        [--batch 8 --seq 128 --dim 256 --layers 4 --heads 8 --kv-heads 2 --new 128]

Targets: genlab at least as fast as transformers in both (ratio = transformers time /
genlab time >= 1). The first step's losses agree and the generated tokens are identical
(both checked).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, median_seconds, table  # noqa: E402

from genlab.decoder import GPT  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--kv-heads", type=int, default=2)
    parser.add_argument("--vocab", type=int, default=1000)
    parser.add_argument("--prompt", type=int, default=16)
    parser.add_argument("--new", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (default: torch's own choice); on a shared machine "
                             "1 thread keeps small ops from waiting for a descheduled thread")
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    B, T, d = args.batch, args.seq, args.dim

    import transformers

    hf_config = transformers.LlamaConfig(
        vocab_size=args.vocab, hidden_size=d, num_hidden_layers=args.layers,
        num_attention_heads=args.heads, num_key_value_heads=args.kv_heads,
        intermediate_size=(8 * d // 3 + 63) // 64 * 64,  # Llama's 8/3 d, rounded up to 64
        max_position_embeddings=max(T, args.prompt + args.new), tie_word_embeddings=False,
        bos_token_id=0, eos_token_id=1, pad_token_id=None, attn_implementation="sdpa")
    torch.manual_seed(0)
    hf = transformers.LlamaForCausalLM(hf_config).to(device).train()
    ours = GPT.from_hf(hf).to(device).train()
    hf_optimizer = torch.optim.AdamW(hf.parameters(), lr=1e-4)
    ours_optimizer = torch.optim.AdamW(ours.parameters(), lr=1e-4)
    g = torch.Generator().manual_seed(1)
    input_ids = torch.randint(5, args.vocab, (B, T), generator=g).to(device)

    def step_ours():
        ours_optimizer.zero_grad(set_to_none=True)
        loss = ours(input_ids, labels=input_ids).loss
        loss.backward()
        ours_optimizer.step()
        return loss

    def step_hf():
        hf_optimizer.zero_grad(set_to_none=True)
        loss = hf(input_ids=input_ids, labels=input_ids).loss
        loss.backward()
        hf_optimizer.step()
        return loss

    first_losses = (step_ours().item(), step_hf().item())  # the same weights: the same loss
    train_times = median_seconds({"genlab GPT (Llama-style)": step_ours,
                                  "transformers LlamaForCausalLM": step_hf},
                                 device, repeats=args.repeats)

    # generation from the trained-apart models would diverge: reload genlab from transformers
    hf.eval()
    ours = GPT.from_hf(hf).to(device).eval()
    prompt = torch.randint(5, args.vocab, (1, args.prompt), generator=g).to(device)
    n = args.new

    def generate_ours():
        return ours.generate(prompt, n, use_cache=True)

    def generate_hf():
        with torch.no_grad():
            return hf.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=n,
                               min_new_tokens=n, do_sample=False, use_cache=True, pad_token_id=0,
                               eos_token_id=None)

    same_tokens = torch.equal(generate_ours(), generate_hf())
    generate_times = median_seconds({"genlab GPT.generate, KV cache": generate_ours,
                                     "transformers generate, KV cache": generate_hf},
                                    device, warmup=1, repeats=max(3, args.repeats // 2))

    load = "" if device.type != "cpu" else \
        f", load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores"
    print(f"# Llama-style decoder, d={d} layers={args.layers} heads={args.heads} "
          f"kv_heads={args.kv_heads} ffn={hf_config.intermediate_size} vocab={args.vocab}, fp32, "
          f"{machine(device)}{load}")
    print(f"\n## training step (forward + backward + AdamW), B={B} T={T}; first-step losses "
          f"{first_losses[0]:.6f} (genlab) and {first_losses[1]:.6f} (transformers)")
    ours_t = train_times["genlab GPT (Llama-style)"]
    print(table([(name, f"{t * 1e3:.1f} ms", f"{t / ours_t:.2f}x") for name, t in train_times.items()],
                header=("implementation", "median step", "time / genlab")))
    print(f"\n## greedy generation of {n} tokens after a {args.prompt}-token prompt, batch 1; "
          f"identical tokens: {same_tokens}")
    ours_g = generate_times["genlab GPT.generate, KV cache"]
    print(table([(name, f"{n / t:.0f} tokens/s", f"{t / ours_g:.2f}x")
                 for name, t in generate_times.items()],
                header=("implementation", "throughput", "time / genlab")))
    print()
    for what, times, peer in (("training step", train_times, "transformers LlamaForCausalLM"),
                              ("generation", generate_times, "transformers generate, KV cache")):
        ratio = times[peer] / next(iter(times.values()))
        print(f"target {what} genlab <= transformers: {'met' if ratio >= 1 else 'MISSED'} "
              f"(ratio {ratio:.2f})")
    if abs(first_losses[0] - first_losses[1]) > 1e-4 * abs(first_losses[1]):
        raise SystemExit(f"the first-step losses differ: {first_losses}")
    if not same_tokens:
        raise SystemExit("genlab and transformers generated different tokens")


if __name__ == "__main__":
    main()
