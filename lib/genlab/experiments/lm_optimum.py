"""How close do the assignments' tiny models get to the best any model can do?

    python -m genlab.experiments.lm_optimum [--only 03_gpt]

Runs each solution notebook top to bottom (its own training, exactly as a student's
notebook trains), then, in the same kernel, measures the trained model on a fresh
held-out sample of the same hidden Markov language and computes the exact Bayes optimum
on that sample (forward algorithm for next-token loss, forward-backward for masked
tokens). Prints a markdown table; the README's table is this command's output.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient

REPO = Path(__file__).resolve().parents[3]

# Code appended to each solution notebook; it prints one JSON line starting with RESULT.
MEASURES = {
    "02_bert": ("solutions/02_bert/bert.ipynb", """
import json, torch
inputs, truth, symbols, masked = held_out(2048, torch.Generator().manual_seed(2024))  # unseen
blanks = inputs["input_ids"] == MASK_ID
predicted = fill_masks(**inputs)
accuracy = (predicted[blanks] == truth[blanks]).float().mean().item()
bayes = hmm.bayes_masked_accuracy(symbols, masked)["accuracy"]
print("RESULT" + json.dumps({"model": "tiny BERT (masked-token accuracy)", "value": accuracy,
                              "bayes": bayes, "tokens": int(blanks.sum())}))
"""),
    "03_gpt": ("solutions/03_gpt/gpt.ipynb", """
import json, torch
held_out = vocab.symbols_to_ids(hmm.sample(512, 32, seed=2024))  # (512, 32), unseen
logprobs = next_token_logprobs(held_out)  # (B, T, V)
model_loss = -logprobs[:, :-1].gather(-1, held_out[:, 1:, None]).mean().item()
bayes_loss = hmm.next_token_loss(vocab.ids_to_symbols(held_out))
print("RESULT" + json.dumps({"model": "tiny GPT (next-token loss, nats)", "value": model_loss,
                              "bayes": bayes_loss, "tokens": int(held_out[:, 1:].numel())}))
"""),
}


def measure(assignment: str) -> dict:
    path, code = MEASURES[assignment]
    nb = nbformat.read(REPO / path, as_version=4)
    nb.cells.append(nbformat.v4.new_code_cell(code))
    client = NotebookClient(nb, timeout=600, kernel_name="python3",
                            resources={"metadata": {"path": str((REPO / path).parent)}})
    start = time.perf_counter()
    client.execute()
    seconds = time.perf_counter() - start
    text = "".join(o.get("text", "") for o in nb.cells[-1].outputs)
    line = next(line for line in text.splitlines() if line.startswith("RESULT"))
    return {**json.loads(line[len("RESULT"):]), "assignment": assignment, "seconds": seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", choices=sorted(MEASURES))
    args = parser.parse_args()
    rows = [measure(a) for a in ([args.only] if args.only else sorted(MEASURES))]
    print("| notebook | after the notebook's training | Bayes-optimal | gap | held-out tokens | notebook run |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| `{r['assignment']}`: {r['model']} | {r['value']:.3f} | {r['bayes']:.3f} | "
              f"{r['value'] - r['bayes']:+.3f} | {r['tokens']:,} | {r['seconds']:.0f} s |")


if __name__ == "__main__":
    main()
