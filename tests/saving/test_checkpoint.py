"""Checkpoints in-process: the RNG order on a mid-epoch resume, rotation and `best`, the manifest."""

import json

import torch

from train.saving import storage
from train.saving.checkpoint import Checkpoint
from train.engine.loop import Loop  # noqa: F401

from tests.helpers.small_runs import tiny_loader, tiny_loop






def resumed_weights(path, put_rng_back=True):
    loop = tiny_loop()
    resumed = Checkpoint(loop, path.parent).load(path)
    if not put_rng_back:  # what load_state alone does: the RNG as saved, before the iterator starts
        unfinished = torch.load(path / "rank-0.pt", weights_only=True)
        loop.load_state_dict({"position": resumed.position, "history": resumed.history, "unfinished": unfinished})
    loop.fit(2, tiny_loader())  # epochs is the total: the resumed epoch and no more
    return loop.model.state_dict(), loop.history.rows


def test_mid_epoch_resume_needs_the_rng_put_back_after_the_iterator_starts(tmp_path):
    ref = tiny_loop()
    ref.fit(2, tiny_loader(), callbacks=[Checkpoint(ref, tmp_path, every_steps=3, keep_last=10)])
    mid_epoch_2 = tmp_path / "step-00000012"  # 8 batches per epoch: batch 4 of epoch 2
    position = json.loads((mid_epoch_2 / "loop.json").read_text())["position"]
    assert position == dict(epoch=2, batch=4, step=12, processes=1, accumulation=1, samples_seen=12 * 8)
    weights, rows = resumed_weights(mid_epoch_2)
    assert [r["epoch"] for r in rows] == [1, 2]
    assert all(torch.equal(weights[k], v) for k, v in ref.model.state_dict().items())
    assert [{k: r[k] for k in ("epoch", "loss", "lr")} for r in rows] == \
           [{k: r[k] for k in ("epoch", "loss", "lr")} for r in ref.history.rows]

    # restoring the RNG states before the iterator starts (what load_state alone does) is not exact
    weights, _ = resumed_weights(mid_epoch_2, put_rng_back=False)
    assert not all(torch.equal(weights[k], v) for k, v in ref.model.state_dict().items())


def test_rotation_keeps_the_newest_and_the_best(tmp_path):
    loop = tiny_loop()
    # a constant lr never beats epoch 1's: with mode=max the best is the first epoch's checkpoint
    ck = Checkpoint(loop, tmp_path, every_steps=2, keep_last=2, monitor="lr", mode="max")
    loop.fit(3, tiny_loader(), callbacks=[ck])
    names = sorted(p.name for p in tmp_path.glob("step-*"))
    assert names == ["step-00000008", "step-00000022", "step-00000024"]
    assert (tmp_path / "best").read_text().strip() == "step-00000008"
    assert (tmp_path / "latest").read_text().strip() == "step-00000024"
    assert not list(tmp_path.glob(".tmp-*"))


def test_the_manifest_lists_every_file_with_its_size(tmp_path):
    loop = tiny_loop()
    loop.fit(1, tiny_loader(), callbacks=[Checkpoint(loop, tmp_path)])
    folder = tmp_path / "step-00000008"
    manifest = json.loads((folder / "manifest.json").read_text())["files"]
    on_disk = {p.name: p.stat().st_size for p in folder.iterdir() if p.name != "manifest.json"}
    assert {k: v["size"] for k, v in manifest.items()} == on_disk
    assert {"model.safetensors", "optimizer.bin", "random_states_0.pkl", "loop.json", "callbacks.pt"} <= set(on_disk)
    assert storage.damage(folder) is None
    model = folder / "model.safetensors"
    model.write_bytes(model.read_bytes()[:100])
    assert storage.damage(folder) == f"model.safetensors: 100 bytes, expected {on_disk['model.safetensors']}"
