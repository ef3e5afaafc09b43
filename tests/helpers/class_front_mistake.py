"""A user's class-front script with a mistake (variable-length samples, no collate), run as a
process by the tests: `python class_front_mistake.py OUTPUT_DIR`."""

import sys

import torch

import train
from helpers.sequences import MeanPool, Sequences

model = train.Model(MeanPool())
model.compile(loss_func=torch.nn.CrossEntropyLoss(), optimizer=torch.optim.Adam(model.parameters()))
model.fit(1, torch.utils.data.DataLoader(Sequences(64, 0), batch_size=16), output_dir=sys.argv[1], progress=False)
