"""Multi-process training: deterministic sharding, and two CPU processes (gloo) whose weights stay identical."""
from __future__ import annotations

import socket

import pytest
import torch
import torch.multiprocessing as mp

from DeepRegAblationTrainingLib import data, training
from DeepRegAblationTrainingLib.training import distributed

TINY_ARCH = {"enc_features": [8, 8, 8, 8], "dec_features": [8] * 7}


def test_shards_partition_the_single_process_sequence():
    single = distributed.shard_batches(5, 2, distributed.DistInfo(0, 1, 0))
    ranks = [distributed.shard_batches(5, 2, distributed.DistInfo(r, 3, r)) for r in range(3)]
    flat = sorted(i for shard in ranks for batch in shard for i in batch)
    assert flat == list(range(30))  # 5 steps x 2 pairs x 3 ranks, no index twice
    assert [len(shard) for shard in ranks] == [5, 5, 5]  # equal step counts: no rank waits forever
    assert sorted(i for batch in single for i in batch) == list(range(10))
    assert distributed.shard_batches(5, 2, distributed.DistInfo(1, 3, 1)) == ranks[1]  # a pure function
    assert distributed.shard_batches(5, 2, distributed.DistInfo(1, 3, 1), start_step=3) == ranks[1][3:]


def test_environment_parsing(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("RANK", "2")
    monkeypatch.setenv("LOCAL_RANK", "0")
    info = distributed.dist_info_from_env()
    assert (info.rank, info.world_size, info.local_rank, info.enabled, info.is_main) == (2, 4, 0, True, False)
    monkeypatch.setenv("RANK", "7")
    with pytest.raises(ValueError, match="RANK=7"):
        distributed.dist_info_from_env()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, toy: str, out: str, states: str) -> None:
    """One torchrun-like process: environment variables, then the ordinary ``train``."""
    import os

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    config = training.TrainConfig(
        variant="regloss", ndim=2, out_dir=out, steps=4, steps_per_epoch=2, device="cpu", seed=0,
        data={"kind": "oasis2d", "path": toy, "val_pairs": 2, "val_fraction": 0.4},
        arch=TINY_ARCH, uncertainty=True, progress_bar=False, log_tensorboard=False,
    )
    summary = training.train(config)
    torch.save({"model": summary["model"].state_dict(), "loss": summary["loss_state"]}, f"{states}/rank{rank}.pt")


def test_two_gloo_processes_keep_identical_weights(tmp_path):
    toy = data.write_toy_oasis2d(tmp_path / "toy", n_subjects=6, shape=(32, 32))
    out, states = tmp_path / "run", tmp_path / "states"
    states.mkdir()
    mp.spawn(_worker, args=(2, _free_port(), str(toy), str(out), str(states)), nprocs=2, join=True)
    rank0 = torch.load(states / "rank0.pt", weights_only=True)
    rank1 = torch.load(states / "rank1.pt", weights_only=True)
    for part in ("model", "loss"):
        assert rank0[part].keys() == rank1[part].keys()
        for key in rank0[part]:
            assert torch.equal(rank0[part][key], rank1[part][key]), f"{part} {key} differs between ranks"
    # rank 0 wrote the checkpoint (the same weights); the model trained; the learned loss weights too
    ckpt = torch.load(out / "last.pt", weights_only=True)
    assert ckpt["world_size"] == 2 and ckpt["global_step"] == 4
    for key, value in ckpt["model_state"].items():
        assert torch.equal(value, rank0["model"][key])
    training.seed_everything(0)
    from DeepRegAblationLib.models.network import build_model

    initial = build_model("regloss", 2, **TINY_ARCH).state_dict()
    assert any(not torch.equal(initial[k], rank0["model"][k]) for k in initial)
    assert any(float(v) != 0.0 for v in rank0["loss"].values())
    # one log, written by rank 0 only: 4 steps
    assert len((out / "steps.jsonl").read_text().splitlines()) == 4
