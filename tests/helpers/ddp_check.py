"""Run under 1 or 2 processes: evaluate and predict with a fixed model, then fit one epoch.
Each rank writes `rank<i>.pt` into OUTDIR for the test to compare."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import torch  # noqa: E402
from accelerate.utils import set_seed  # noqa: E402

import train  # noqa: E402
from train.data.loaders import make_loaders  # noqa: E402
from train.fronts.models import TutorialCNN  # noqa: E402

out = Path(sys.argv[1])
root = Path(__file__).resolve().parents[2]
cfg = train.load_config(None, ["batch_size=64", "data.train_size=1024", "data.val_size=1001",
                               f"data.path={root / 'data' / 'mnist'}"])
set_seed(0)
loaders = make_loaders(cfg, seed=cfg.seed)
model = train.Model(TutorialCNN())
model.compile(loss_func=torch.nn.CrossEntropyLoss(), optimizer=torch.optim.Adam(model.parameters(), lr=0.01),
              metrics_dict={"accuracy": train.metrics.accuracy})
initial = {k: v.clone() for k, v in model.net.state_dict().items()}  # for the test's own reference
scores = model.evaluate(loaders.val)
preds = model.predict(loaders.val)
history = model.fit(1, loaders.train, loaders.val)
from accelerate import PartialState  # noqa: E402

rank, world = PartialState().process_index, PartialState().num_processes
torch.save({"scores": scores, "preds": preds, "history": history.to_dict("list"), "world": world, "initial": initial},
           out / f"rank{rank}.pt")
