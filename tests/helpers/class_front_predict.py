"""The class front as a user's script, for the tests: train the digits example into OUT and save
`Model.predict` of the validation set at the end of training to OUT/predicted.pt
(`python class_front_predict.py OUT`); with `--load`, rebuild the net, `load_weights(OUT)` and save
the predictions to OUT/loaded.pt instead."""

import sys

import torch

import train
from examples.digits.data import load
from examples.digits.model import Net

out, loading = sys.argv[1], "--load" in sys.argv
train.seed_everything(0)
model = train.Model(Net(hidden=32))
model.compile(loss_func=torch.nn.CrossEntropyLoss(), optimizer=torch.optim.Adam(model.parameters(), lr=0.003),
              metrics_dict={"accuracy": train.metrics.accuracy})
train_set, val_set = load(val_fraction=0.2, seed=0)
dl_val = torch.utils.data.DataLoader(val_set, batch_size=64)
if loading:
    torch.save(model.load_weights(out).predict(dl_val), f"{out}/loaded.pt")
else:
    model.fit(2, torch.utils.data.DataLoader(train_set, batch_size=64, shuffle=True), dl_val, output_dir=out,
              progress=False, seed=0)
    torch.save(model.predict(dl_val), f"{out}/predicted.pt")
