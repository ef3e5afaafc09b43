"""A user's own training script (a test fixture): a model and data the project has never seen,
trained through the class front (or, with `--front function`, the function front) with an output
folder, so that it gets checkpoints, exact resume, preemption and Ctrl-C handling like the script
front.

    python tests/helpers/user_script.py OUTPUT_DIR [--epochs N] [--every STEPS] [--seed S]
        [--front class|function] [--hidden H] [--nan-at BATCH] [--trackers tensorboard,wandb]
"""

import argparse
import os

import torch
from torch import nn

import train

parser = argparse.ArgumentParser()
parser.add_argument("output_dir", nargs="?", default=os.environ.get("TRAIN_OUTPUT_DIR", "runs/user_script"))
parser.add_argument("--epochs", type=int, default=2)
parser.add_argument("--every", type=int, default=2, help="a checkpoint every N optimizer steps")
parser.add_argument("--seed", type=int, default=0)
parser.add_argument("--size", type=int, default=2048)
parser.add_argument("--front", choices=["class", "function"], default="class")
parser.add_argument("--hidden", type=int, default=256, help="the width of the hidden layer (the checkpoint's size)")
parser.add_argument("--nan-at", type=int, default=0, help="the model's output turns NaN at this training batch")
parser.add_argument("--trackers", default="", help="comma-separated: tensorboard, wandb")
args = parser.parse_args()


class Blobs(torch.utils.data.Dataset):
    """Three Gaussian blobs in 16 dimensions, the same for a given seed."""

    def __init__(self, n, seed):
        g = torch.Generator().manual_seed(seed)
        self.y = torch.randint(0, 3, (n,), generator=g)
        centres = torch.randn(3, 16, generator=torch.Generator().manual_seed(99)) * 0.4
        self.x = centres[self.y] + torch.randn(n, 16, generator=g)

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        return self.x[i], self.y[i]


class Net(nn.Module):
    def __init__(self, hidden=256, nan_at=0):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(16, hidden), nn.ReLU(), nn.Dropout(0.3), nn.Linear(hidden, 3))
        self.nan_at, self.batches = nan_at, 0

    def forward(self, x):
        out = self.body(x)
        if self.training:
            self.batches += 1
            if self.batches == self.nan_at:
                out = out * float("nan")  # a diverging run, as a user meets it
        return out


train.seed_everything(args.seed)  # the initial weights
net = Net(args.hidden, args.nan_at)
optimizer = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
dl_train = torch.utils.data.DataLoader(Blobs(args.size, 1), batch_size=64, shuffle=True)
dl_val = torch.utils.data.DataLoader(Blobs(500, 2), batch_size=128)
options = dict(output_dir=args.output_dir, checkpoint_every=args.every, seed=args.seed, progress=False,
               trackers=tuple(t for t in args.trackers.split(",") if t))
if args.front == "class":
    model = train.Model(net)
    model.compile(loss_func=nn.CrossEntropyLoss(), optimizer=optimizer,
                  metrics_dict={"accuracy": train.metrics.accuracy},
                  lr_scheduler=torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5))
    history = model.fit(args.epochs, dl_train, dl_val, **options)
else:  # the tutorial's function style: the model carries its optimizer, loss and metric
    net.optimizer, net.loss_func = optimizer, nn.CrossEntropyLoss()
    net.metric_func, net.metric_name = train.metrics.accuracy, "accuracy"
    history = train.train_model(net, args.epochs, dl_train, dl_val, log_step_freq=16, **options)
