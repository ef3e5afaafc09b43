"""Your own training script with the class front: your model and data in Python, the service's
outputs, checkpoints, resume, preemption and Ctrl-C handling from `fit(..., output_dir=...)`.

    python examples/custom_fit.py                      # one process; run it again to resume
    launch/cpu2.sh examples/custom_fit.py              # two CPU processes, restarted after a crash
    sbatch --gpus-per-node=0 slurm/train.sh examples/custom_fit.py   # SLURM, requeued on preemption

Exit codes: 0 done; 75 stopped by SIGUSR1/SIGTERM after saving a checkpoint; 130 stopped by Ctrl-C
after saving one; 3 the loss became NaN (fit raises NonFiniteLoss); run it again to resume.
"""

import os

import torch
from torch import nn

import train
from digits.data import load  # examples/ is on the path: Python puts the script's folder there
from digits.model import Net

# slurm/train.sh gives each job (and array task) its own folder, so that a requeued job resumes
output_dir = os.environ.get("TRAIN_OUTPUT_DIR", "runs/custom_fit")

train.seed_everything(0)  # the same initial weights on every run: a rerun resumes the same training
net = Net(hidden=64)
model = train.Model(net)
model.summary(input_shape=(1, 8, 8))
optimizer = torch.optim.Adam(net.parameters(), lr=0.003)
model.compile(loss_func=nn.CrossEntropyLoss(), optimizer=optimizer,
              metrics_dict={"accuracy": train.metrics.accuracy},
              lr_scheduler=torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=20))

train_set, val_set = load(val_fraction=0.2, seed=0)
dl_train = torch.utils.data.DataLoader(train_set, batch_size=64, shuffle=True)
dl_val = torch.utils.data.DataLoader(val_set, batch_size=256)

history = model.fit(20, dl_train, dl_val, output_dir=output_dir, checkpoint_every=20, seed=0)
print(f"best validation accuracy {history['val_accuracy'].max():.4f}")
