"""`batch_size: auto` (train.service.batch_find, train.fronts.batch_auto) on two real processes with a
model that runs out of memory above 48 samples on rank 0 and 40 on rank 1: both settle on the lower
limit, the global batch is kept through accumulation, and the run (resumed too) equals a run given
that size by hand, bit for bit."""

import os
import subprocess

import pytest
import torch
import yaml
from safetensors.torch import load_file

from conftest import MNIST, ROOT, flat



COMMON = ["model=tests.helpers.oom:Net", "data.train_size=1920", "data.val_size=500", f"data.path={MNIST}",
          "progress=false", "seed=3", "scheduler.name=none"]  # no schedule: a run extended by an epoch is a longer run


def cpu2(*args) -> subprocess.CompletedProcess:
    return subprocess.run([str(ROOT / "launch" / "cpu2.sh"), *COMMON, *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=600, env=dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1"))


@pytest.mark.slow
def test_both_processes_take_the_lower_limit_and_keep_the_global_batch(tmp_path):
    auto = tmp_path / "auto"
    first = cpu2("batch_size=auto", "batch_find.global_batch=160", "epochs=1", f"output_dir={auto}")
    assert first.returncode == 0, first.stdout + first.stderr
    said = flat(first.stdout)
    # rank 1 fails above 40 even where rank 0 fits (48): 40 for both, and 80 per process = 40 x 2
    assert "tried 1, 2, 4, 8, 16, 32, 64 (out of memory), 48 (out of memory), 40, 44 (out of memory), 42 (out of " \
           "memory), 41 (out of memory)): 40 per process x accumulation 2 keeps the global batch of 160" in said, said
    assert "batch 40 per process x 2 process(es) x accumulation 2 = 160 samples per optimizer step" in said
    saved = yaml.safe_load((auto / "config.yaml").read_text())
    assert (saved["batch_size"], saved["gradient_accumulation_steps"]) == (40, 2)

    again = cpu2("batch_size=auto", "batch_find.global_batch=160", "epochs=2", f"output_dir={auto}")  # a resume
    assert again.returncode == 0 and "resuming from" in again.stdout, again.stdout + again.stderr
    assert "batch_size: auto: 40 per process x accumulation 2, as found when this run began" in flat(again.stdout)
    assert "tried" not in again.stdout  # no search again

    by_hand = tmp_path / "by_hand"
    done = cpu2("batch_size=40", "gradient_accumulation_steps=2", "epochs=2", f"output_dir={by_hand}")
    assert done.returncode == 0, done.stdout + done.stderr
    mine, theirs = (load_file(str(f / "model.safetensors")) for f in (auto, by_hand))
    assert all(torch.equal(mine[k], theirs[k]) for k in theirs)


@pytest.mark.parametrize("limit, cap, expected", [(40, 1000, 40), (1, 1000, 1), (0, 1000, 0), (1000, 300, 300),
                                                  (64, 64, 64), (63, 1000, 63)])
def test_the_search_doubles_then_bisects_to_the_largest_size_that_fits(limit, cap, expected):
    from train.engine.devices import make_accelerator
    from train.service.batch_find import search

    found = search(lambda size: size <= limit, make_accelerator(), cap)
    assert found.size == expected
    sizes = [size for size, _ in found.tried]
    assert len(sizes) == len(set(sizes)) and max(sizes) <= cap  # none tried twice, none over the cap
    assert all(ok == (size <= limit) for size, ok in found.tried)


def test_the_class_front_finds_the_size_and_trains_as_a_run_given_it_by_hand(tmp_path, capsys):
    """fit(batch_size="auto") on one process (the model's limit there: 48): 48 x accumulation 4 keeps
    batch_find.global_batch 192; the weights equal a fit given a DataLoader of 48 and accumulation 4."""
    import train
    from tests.helpers.oom import Net

    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(960, 1, 28, 28, generator=g), torch.randint(0, 10, (960,), generator=g)

    def fitted(loader_batch, **options):
        train.seed_everything(1)
        net = Net()
        model = train.Model(net)
        model.compile(loss_func=torch.nn.CrossEntropyLoss(), optimizer=torch.optim.Adam(net.parameters(), lr=0.01),
                      gradient_accumulation_steps=options.pop("accumulation", 1))
        data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=loader_batch, shuffle=True,
                                           generator=torch.Generator().manual_seed(2))
        model.fit(2, data, **options)
        return {k: v.clone() for k, v in net.state_dict().items()}

    auto = fitted(8, batch_size="auto", batch_find={"global_batch": 192})
    said = flat(capsys.readouterr().out)
    assert "largest micro-batch that fits 48 per process" in said and "48 per process x accumulation 4" in said
    by_hand = fitted(48, accumulation=4)
    assert all(torch.equal(auto[k], by_hand[k]) for k in by_hand)


def test_an_error_that_is_not_out_of_memory_ends_the_search_with_it():
    from train.engine.devices import make_accelerator
    from train.service.batch_find import search

    def broken(size):
        if size == 4:
            raise ValueError("a bug in the model at 4 samples")
        return True

    with pytest.raises(ValueError, match="a bug in the model"):
        search(broken, make_accelerator(), 100)


@pytest.mark.launches
def test_a_sharded_model_is_refused_in_one_line_before_anything_is_written(tmp_path):
    from conftest import PYTHON

    done = subprocess.run([PYTHON, str(ROOT / "train" / "main.py"), *COMMON, "batch_size=auto", "strategy=fsdp",
                           f"output_dir={tmp_path / 'out'}"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and done.stderr.strip() == \
        "error: batch_size: auto does not search sharded models (strategy=fsdp) yet; give batch_size", done.stderr
    assert not (tmp_path / "out").exists()
