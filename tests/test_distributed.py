"""Ranks agree on skipping a non-finite update (two real gloo processes)."""
import math

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from mnistgen.distributed import World


def _worker(rank: int, init_file: str, values: list, results):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        results[rank] = World(rank=rank, size=2).all_finite(torch.tensor(values[rank]))
    finally:
        dist.destroy_process_group()


def agree(tmp_path, values):
    results = mp.Manager().dict()
    mp.spawn(_worker, args=(str(tmp_path / "rendezvous"), values, results), nprocs=2, join=True)
    return [results[0], results[1]]


def test_one_rank_with_a_nan_makes_every_rank_skip(tmp_path):
    assert agree(tmp_path, [1.5, math.nan]) == [False, False]


def test_finite_everywhere_means_every_rank_applies(tmp_path):
    assert agree(tmp_path, [1.5, -2.0]) == [True, True]


def test_single_process_needs_no_process_group():
    assert World().all_finite(torch.tensor(0.5)) and not World().all_finite(torch.tensor(math.inf))
