"""GPT greedy generation of 256 tokens with the KV cache: genlab against transformers'
GPT-2 ``generate`` (same weights, same configuration) and genlab without the cache.

    .venv/bin/python bench/gpt_generate.py [--device cpu|cuda] [--new 256 --dim 256 --layers 4]

Targets: tokens/s at least transformers' (ratio >= 1) and at least 5x genlab without
the cache. The three produce the same tokens (checked).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, median_seconds, table  # noqa: E402

from genlab.decoder import GPT  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--new", type=int, default=256)
    parser.add_argument("--prompt", type=int, default=16)
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    device = torch.device(args.device)

    import transformers

    hf_config = transformers.GPT2Config(vocab_size=1000, n_positions=args.prompt + args.new + 8,
                                        n_embd=args.dim, n_layer=args.layers, n_head=args.heads,
                                        bos_token_id=0, eos_token_id=1, pad_token_id=0,
                                        attn_implementation="sdpa")
    torch.manual_seed(0)
    hf = transformers.GPT2LMHeadModel(hf_config).to(device).eval()
    ours = GPT.from_hf(hf).to(device).eval()
    prompt = torch.randint(5, 1000, (1, args.prompt), generator=torch.Generator().manual_seed(1)).to(device)
    n = args.new

    def ours_cached():
        return ours.generate(prompt, n, use_cache=True)

    def ours_uncached():
        return ours.generate(prompt, n, use_cache=False)

    def hf_generate():
        with torch.no_grad():
            return hf.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=n,
                               min_new_tokens=n, do_sample=False, use_cache=True, pad_token_id=0,
                               eos_token_id=None)

    tokens = [fn()[0, -n:].tolist() for fn in (ours_cached, ours_uncached, hf_generate)]
    same = tokens[0] == tokens[1] == tokens[2]
    times = median_seconds({"genlab GPT, KV cache": ours_cached, "transformers GPT-2 generate": hf_generate,
                            "genlab GPT, no cache": ours_uncached}, device, warmup=1, repeats=args.repeats)
    ours_t = times["genlab GPT, KV cache"]
    print(f"# greedy generation of {n} tokens after a {args.prompt}-token prompt, d={args.dim} "
          f"layers={args.layers}, batch 1, fp32, {machine(device)}; identical tokens: {same}")
    print(table([(name, f"{n / t:.0f} tokens/s", f"{t / ours_t:.2f}x") for name, t in times.items()],
                header=("implementation", "throughput", "genlab-cache speed-up")))
    hf_ratio = times["transformers GPT-2 generate"] / ours_t
    cache_ratio = times["genlab GPT, no cache"] / ours_t
    print(f"target >= transformers: {'met' if hf_ratio >= 1 else 'MISSED'} (ratio {hf_ratio:.2f})")
    print(f"target >= 5x without cache: {'met' if cache_ratio >= 5 else 'MISSED'} (ratio {cache_ratio:.2f})")
    if not same:
        raise SystemExit("the implementations generated different tokens")


if __name__ == "__main__":
    main()
