"""Checkpoint storage: pickles that would run code refused (torch.save files and sharded DCP folders),
the same step saved again."""

import json
import os
import pytest
import torch
from train.base.errors import UserError


def test_a_pickle_that_would_run_code_is_refused_before_it_is_loaded(tmp_path):
    from train.saving.storage import refuse_unsafe

    class Evil:
        def __reduce__(self):
            return (os.system, ("touch pwned",))

    torch.save({"rng": torch.get_rng_state()}, tmp_path / "fine.pt")
    refuse_unsafe(tmp_path)  # tensors and plain data pass
    torch.save({"x": Evil()}, tmp_path / "evil.pt")
    with pytest.raises(UserError, match=r"evil.pt would run code when loaded \(it imports posix.system\)"):
        refuse_unsafe(tmp_path)
    (tmp_path / "evil.pt").write_bytes(b"not a torch file")
    with pytest.raises(UserError, match="evil.pt is not a file torch.save wrote"):
        refuse_unsafe(tmp_path)


def test_saving_the_same_step_again_keeps_latest_valid(tmp_path):
    from tests.helpers.small_runs import tiny_loader as loader, tiny_loop as build

    from train.saving.checkpoint import Checkpoint

    loop = build()
    ck = Checkpoint(loop, tmp_path)
    loop.fit(1, loader(), callbacks=[ck])  # step-00000008 at the epoch's end
    first = (tmp_path / "step-00000008" / "manifest.json").read_text()
    ck.save()  # the same step again, as a resumed epoch that ended where it had been saved
    assert (tmp_path / "latest").read_text().strip() == "step-00000008"
    assert (tmp_path / "step-00000008" / "manifest.json").is_file()
    assert not list(tmp_path.glob(".old-*")) and not list(tmp_path.glob(".tmp-*"))
    from train.saving import storage

    assert storage.damage(tmp_path / "step-00000008") is None  # replaced whole: every file its manifest lists
    assert json.loads(first)["files"].keys() == json.loads((tmp_path / "step-00000008" / "manifest.json")
                                                           .read_text())["files"].keys()


class _RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.filterwarnings("ignore:torch.distributed is disabled")  # DCP on one process, as meant
def test_a_sharded_checkpoint_whose_pickles_would_run_code_is_refused_before_torch_reads_them(tmp_path):
    """torch's DCP reader unpickles `.metadata` with plain pickle and each non-tensor item with
    weights_only=False: both are checked first, and nothing of them runs."""
    import pickle

    import torch.distributed.checkpoint as dcp

    from train.saving.storage import refuse_unsafe

    marker = tmp_path / "ran"
    state = {"w": torch.randn(4, 3), "groups": [{"lr": 0.1, "betas": (0.9, 0.999)}], "step": 3}
    dcp.save(state, checkpoint_id=str(tmp_path / "good" / "model"))  # one process, no group
    refuse_unsafe(tmp_path / "good")  # DCP's own metadata, tensors and plain items pass
    dcp.save({**state, "groups": _RunsCode(marker)}, checkpoint_id=str(tmp_path / "item" / "model"))
    with pytest.raises(UserError, match=r"__0_0.distcp item groups would run code when loaded \(it imports "
                                        r"posix.system\)"):
        refuse_unsafe(tmp_path / "item")
    dcp.save(state, checkpoint_id=str(tmp_path / "meta" / "model"))
    (tmp_path / "meta" / "model" / ".metadata").write_bytes(pickle.dumps(_RunsCode(marker)))
    with pytest.raises(UserError, match=r"\.metadata would run code when loaded, or is not DCP's \(it imports "
                                        r"posix.system\)"):
        refuse_unsafe(tmp_path / "meta")
    (tmp_path / "meta" / "model" / ".metadata").write_bytes(b"not a pickle")
    with pytest.raises(UserError, match=r"\.metadata would run code when loaded, or is not DCP's"):
        refuse_unsafe(tmp_path / "meta")
    assert not marker.exists()


@pytest.mark.filterwarnings("ignore:torch.distributed is disabled")
def test_what_the_check_cannot_see_into_is_refused(tmp_path):
    """The ways around the pickle check a review found: a `.metadata` that is not DCP's (torch then
    falls back to `__0.metadata`, unpickled unchecked), a per-process metadata file, shards without
    their `.metadata`, and a symbolic link to a folder the walk does not enter."""
    import pickle
    import shutil

    import torch.distributed.checkpoint as dcp

    from train.saving.storage import refuse_unsafe

    good = tmp_path / "good"
    dcp.save({"w": torch.randn(4, 3)}, checkpoint_id=str(good / "model"))
    refuse_unsafe(good)

    def variant(name):
        folder = tmp_path / name
        shutil.copytree(good, folder)
        return folder

    none = variant("none")
    (none / "model" / ".metadata").write_bytes(pickle.dumps(None))
    with pytest.raises(UserError, match=r"\.metadata would run code when loaded, or is not DCP's \(it holds a "
                                        r"NoneType, not DCP's Metadata"):
        refuse_unsafe(none)
    fallback = variant("fallback")
    (fallback / "model" / "__0.metadata").write_bytes(pickle.dumps(_RunsCode(tmp_path / "ran")))
    with pytest.raises(UserError, match=r"holds a per-process DCP metadata file \(model/__0.metadata\), which cannot "
                                        r"be checked"):
        refuse_unsafe(fallback)
    bare = variant("bare")
    (bare / "model" / ".metadata").unlink()
    with pytest.raises(UserError, match=r"holds shards without their .metadata \(model\)"):
        refuse_unsafe(bare)
    linked = tmp_path / "linked"
    linked.mkdir()
    (linked / "model").symlink_to(fallback / "model")
    with pytest.raises(UserError, match=r"holds a symbolic link \(model\)"):
        refuse_unsafe(linked)
    assert not (tmp_path / "ran").exists()
