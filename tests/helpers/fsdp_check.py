"""Run under 2 processes with strategy=fsdp (or 1, unsharded): fit a small MLP on fixed batches in
order through the class front, then evaluate and predict. Each rank writes `held<rank>.pt` (the parameter and optimizer-state elements it holds); rank 0 writes `result.pt` into OUTDIR (the
initial weights, the history, the scores, the predictions) and the run's folder `run/`."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import torch  # noqa: E402

import train  # noqa: E402

out = Path(sys.argv[1])
strategy = sys.argv[2] if len(sys.argv) > 2 else "fsdp"
g = torch.Generator().manual_seed(0)
x = torch.randn(640, 16, generator=g)
y = (x[:, :4].sum(dim=1) > 0).long() + (x[:, 4] > 1).long()  # 3 classes
vx, vy = torch.randn(101, 16, generator=g), torch.randint(0, 3, (101,), generator=g)
torch.manual_seed(0)
net = torch.nn.Sequential(torch.nn.Linear(16, 64), torch.nn.ReLU(), torch.nn.Linear(64, 64), torch.nn.ReLU(),
                          torch.nn.Linear(64, 3))
initial = {k: v.clone() for k, v in net.state_dict().items()}
model = train.Model(net)
model.compile(torch.nn.CrossEntropyLoss(), torch.optim.Adam(net.parameters(), lr=0.01),
              metrics_dict={"accuracy": train.metrics.accuracy}, strategy=strategy, fsdp={"min_num_params": 1000})
batch = int(sys.argv[3]) if len(sys.argv) > 3 else 32
train_dl = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=batch)
val_dl = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(vx, vy), batch_size=batch)
history = model.fit(3, train_dl, val_dl, output_dir=out / "run", progress=False, checkpoint=False)
scores = model.evaluate(val_dl)
preds = model.predict(val_dl)
from accelerate import PartialState  # noqa: E402

loop = model._run.loop  # what this process holds after training: its shards and their optimizer state
local = lambda t: t.to_local() if hasattr(t, "to_local") else t  # noqa: E731
# the optimizer's parameters are the shards (the root's own, unsharded for a forward without backward,
# stay gathered on the module after evaluate/predict)
held = {"parameters": sum(local(p).numel() for g in loop.optimizer.param_groups for p in g["params"]),
        "optimizer": sum(local(v).numel() for s in loop.optimizer.state_dict()["state"].values()
                         for k, v in s.items() if k != "step")}
torch.save(held, out / f"held{PartialState().process_index}.pt")
if PartialState().is_main_process:
    torch.save({"initial": initial, "history": history.to_dict("list"), "scores": scores, "preds": preds,
                "x": x, "y": y, "vx": vx, "vy": vy}, out / "result.pt")
