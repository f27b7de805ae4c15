"""Training under torchrun with DistributedDataParallel: 2 CPU processes (gloo), tiny preset.

One process with a global batch of 4 and two processes with 2 each give the same loss curve and
adapter; only rank 0 writes; an interrupted 2-process run resumes to the same end."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from demo.convert import load_adapter_checkpoint
from demo.train.cli import main as train_main
from test_train import caption_set, feature_dir, release  # noqa: F401  (fixtures)

ROOT = Path(__file__).resolve().parents[1]
STEPS = 3  # 6 samples, global batch 4: the second step has 2 samples, so rank 1 gets none


def _args(release, caption_set, feature_dir, out, batch_size):
    return ["--no-progress", "stage1", "--base", str(release.llama_dir), "--delta", str(release.delta_dir),
            "--captions", str(caption_set), "--features", str(feature_dir), "--out", str(out),
            "--batch-size", str(batch_size), "--max-steps", str(STEPS), "--lr", "5e-3", "--warmup-steps", "1", "--save-every", "2"]


def _log(folder):
    return [json.loads(line) for line in (folder / "log.jsonl").read_text().splitlines()]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def two_process_run(release, caption_set, feature_dir, tmp_path_factory):  # noqa: F811
    out = tmp_path_factory.mktemp("ddp") / "run"
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-addr", "127.0.0.1",
               "--master-port", str(_free_port()), "-m", "demo.train", *_args(release, caption_set, feature_dir, out, 2)]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return out


def test_two_processes_match_one_with_the_same_global_batch(two_process_run, release, caption_set, feature_dir, tmp_path):  # noqa: F811
    single = tmp_path / "single"
    assert train_main(_args(release, caption_set, feature_dir, single, 4)) == 0
    one, two = _log(single), _log(two_process_run)
    assert [e["step"] for e in two] == list(range(1, STEPS + 1))  # one writer: each step logged once
    assert [e["loss"] for e in two] == pytest.approx([e["loss"] for e in one], rel=1e-5)
    assert [e["lr"] for e in two] == [e["lr"] for e in one]
    assert [e["tokens"] for e in two] == [e["tokens"] for e in one]
    a, b = load_adapter_checkpoint(single / "adapter.pth"), load_adapter_checkpoint(two_process_run / "adapter.pth")
    # Sums in another order (float rounding), then AdamW's g / sqrt(v) step of about lr = 5e-3
    # per value: within 2% of one step.
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-4
    # Written once, by rank 0: the final checkpoint only (keep_checkpoints=1), no stray temporaries.
    names = sorted(p.name for p in two_process_run.iterdir())
    assert names == sorted(["adapter.pth", "bad_data.jsonl", "checkpoint-0000003", "latest", "log.jsonl", "loss.svg"])


def _worker(rank: int, port: int, release_paths: dict, caption_path: str, features: str, out: str, stop_at: int) -> None:
    """One of 2 processes: train, interrupted (Ctrl-C) after `stop_at` steps, then the same call again."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    from demo.convert import MetaCheckpoint, build_tokenizer, find_tokenizer, open_base
    from demo.train.adapter_model import AdapterModel
    from demo.train.data import IssueLog, read_captions, tokenize_all
    from demo.train.distributed import close_world, init_world
    from demo.train.features import FeatureStore
    from demo.train.trainer import TrainConfig, train

    world = init_world(torch.device("cpu"))
    tokenizer = build_tokenizer(find_tokenizer(Path(release_paths["llama"]), None))
    samples = tokenize_all(read_captions(Path(caption_path), IssueLog("error")), tokenizer, 512, IssueLog("error"))
    store = FeatureStore(Path(features))
    config = TrainConfig("stage1", batch_size=2, max_steps=STEPS, lr=5e-3, warmup_steps=1, save_every=2, progress=False)

    def model():
        return AdapterModel.from_base(open_base(Path(release_paths["llama"])), 1024, delta=MetaCheckpoint(Path(release_paths["delta"])),
                                      dtype=torch.float32, seed=0)

    def interrupt(step: int, loss: float) -> None:
        if step == stop_at:
            raise KeyboardInterrupt

    try:
        train(model(), samples, store, config, Path(out), on_step=interrupt, world=world)
        raise AssertionError("the run was not interrupted")
    except KeyboardInterrupt:
        pass
    torch.distributed.barrier()  # rank 0 has written its checkpoint
    train(model(), samples, store, config, Path(out), world=world)  # resumes
    close_world(world)


def test_interrupted_two_process_run_resumes_to_the_same_end(two_process_run, release, caption_set, feature_dir, tmp_path):  # noqa: F811
    out = tmp_path / "interrupted"
    paths = {"llama": str(release.llama_dir), "delta": str(release.delta_dir)}
    # spawn, not fork: earlier tests in the same pytest process have started autograd's threads,
    # which a forked child cannot use. Each child uses one thread (_worker).
    mp.start_processes(_worker, args=(_free_port(), paths, str(caption_set), str(feature_dir), str(out), 1), nprocs=2, join=True,
                       start_method="spawn")
    assert [(e["step"], e["loss"]) for e in _log(out)] == [(e["step"], e["loss"]) for e in _log(two_process_run)]
    a, b = load_adapter_checkpoint(out / "adapter.pth"), load_adapter_checkpoint(two_process_run / "adapter.pth")
    assert all(torch.equal(a[k], b[k]) for k in a)
