"""The class front with a stream: `python lm_class_front.py FACTORY OUT` (FACTORY: load or load_hf of
tests.helpers.streams), on any number of processes (launch/cpu2.sh). Trains the tiny GPT-2 for two
epochs on 301 streamed samples with `output_dir=OUT`, the training ids written down by the collate
(OUT/ids-<pid>.txt), then writes `evaluate`'s result to OUT/evaluate.json."""

import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import train  # noqa: E402
from tests.helpers import streams  # noqa: E402
from tests.helpers.lm import tiny_gpt2  # noqa: E402
from train.data.batches import PadCollate  # noqa: E402


def without_ids(samples):
    for s in samples:
        s.pop("id")
    return PadCollate()(samples)


factory, out = sys.argv[1], Path(sys.argv[2])
out.mkdir(parents=True, exist_ok=True)
data = getattr(streams, factory)(301, 51)
train.seed_everything(0)
model = train.Model(tiny_gpt2())
model.compile(loss_func=None, optimizer=torch.optim.AdamW(model.parameters(), lr=3e-3),
              metrics_dict={"perplexity": train.metrics.perplexity})
dl_train = torch.utils.data.DataLoader(data["train"], batch_size=8, collate_fn=streams.RecordingPad(str(out)))
dl_val = torch.utils.data.DataLoader(data["val"], batch_size=8, collate_fn=without_ids)
model.fit(2, dl_train, dl_val, output_dir=str(out), seed=0, progress=False)
result = model.evaluate(dl_val)
if int(__import__("os").environ.get("RANK", "0")) == 0:
    (out / "evaluate.json").write_text(json.dumps(result))
