"""Variable-length batches, side by side: the text example (examples/text) for one epoch with
length-grouped batches and without (plainly shuffled, each batch padded to its longest), in
interleaved rounds; real tokens per second (padding not counted) and the ratio.

    python bench/text.py [--rounds 3] [--train-size 8000] [--json FILE]

Each run is the script in a subprocess (`train/main.py --config examples/text/config.yaml`), read
from its own timer around the epoch (history.csv's epoch_s); both read one tokenizer.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def one_epoch(tmp: Path, grouped: bool, train_size: int, round_: int) -> float:
    import pandas as pd

    out = tmp / f"{'grouped' if grouped else 'plain'}-{round_}"
    subprocess.run([sys.executable, str(ROOT / "train" / "main.py"), "--config", "examples/text/config.yaml",
                    "epochs=1", f"data.args.train_size={train_size}", "data.args.val_size=0", "data.val_size=0",
                    f"data.args.tokenizer_dir={tmp / 'tokenizers'}", f"data.group_by_length={str(grouped).lower()}",
                    "checkpoint.enabled=false", "progress=false", f"output_dir={out}"],
                   check=True, capture_output=True, cwd=ROOT)
    return float(pd.read_csv(out / "history.csv")["epoch_s"].iloc[0])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--train-size", type=int, default=8000)
    parser.add_argument("--json")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        times = {"grouped": [], "plain": []}
        for r in range(args.rounds):
            for grouped in (False, True):
                times["grouped" if grouped else "plain"].append(one_epoch(tmp, grouped, args.train_size, r))
        from examples.text.data import load

        tokens = sum(load(args.train_size, 0, tokenizer_dir=str(tmp / "tokenizers"))["train"].lengths)
    rates = {k: tokens / statistics.median(v) for k, v in times.items()}
    result = {"train_size": args.train_size, "rounds": args.rounds, "real_tokens": tokens, "epoch_s": times,
              "tokens_per_s": rates, "ratio_grouped_to_plain": rates["grouped"] / rates["plain"]}
    print(f"text example, {args.train_size} samples ({tokens} real tokens), one epoch, median of {args.rounds}:")
    print(f"  plain shuffled batches   {rates['plain']:>9,.0f} tokens/s")
    print(f"  length-grouped batches   {rates['grouped']:>9,.0f} tokens/s   ({result['ratio_grouped_to_plain']:.2f}x)")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
