"""Per-sample random draws seeded by (seed, epoch, index), through a prepared loader."""

import torch


def test_per_sample_draws_follow_seed_epoch_and_index_through_a_prepared_loader():
    from helpers.augmented import Noisy

    from train.data.sample_draws import SeededSamples
    from train.engine.loop import Loop, set_epoch

    data = SeededSamples(torch.utils.data.Subset(Noisy(64, 0), range(32)), seed=5)
    loop = Loop(torch.nn.Linear(64, 2), None, torch.nn.functional.cross_entropy)
    dl = loop.prepare_loader(torch.utils.data.DataLoader(data, batch_size=8, shuffle=True))

    torch.manual_seed(0)
    expected = torch.rand(1, generator=torch.Generator().manual_seed(0))  # the global generator's next draw
    first = [data[i][0] for i in range(4)]
    assert all(torch.equal(a, b) for a, b in zip(first, [data[i][0] for i in range(4)]))  # the same draws again
    # loading in this process left its generators where they were: each sample seeds them for its
    # own draws, and puts them back (without that, the next draw would follow the last sample's seed)
    assert torch.equal(torch.rand(1), expected)
    set_epoch(dl, 1)
    assert data.epoch == 1  # the data set hears the epoch although the sampler has set_epoch
    assert not torch.equal(data[0][0], first[0])  # another epoch, other draws
