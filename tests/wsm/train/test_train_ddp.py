"""`wsm train` under torchrun: 2 CPU processes (gloo) against 1 process, on a tiny model and dataset.

The comparison: 2 processes with --batch-size 8 (each process takes 4 images of every batch) against 1 process
with --batch-size 8 --accumulate 2 (two chunks of 4 per step), no augmentation, same seed. Both runs see the same
batches in the same order (wsm.learn.loop.DistributedBatchSampler reproduces the 1-process loader), BatchNorm
normalises over the same 4-image chunks, and each chunk's loss is scaled by its share of the batch, so the
optimiser receives the same gradient: the mean of the two chunk gradients. What may differ is floating-point
summation order (DDP all-reduces the two gradients; one process adds them in its .grad), a relative error of
about 1e-7 per step, which AdamW keeps relative (it divides by the running RMS of the gradient); over the 6 steps
here that stays far below the tolerance used, rtol 1e-5 / atol 1e-6 on every trained parameter and 1e-6
relative on the epoch losses (on this machine the two runs agree exactly).

Not compared: BatchNorm running statistics. DDP broadcasts rank 0's buffers, so they come from rank 0's chunks
only, while the 1-process run updates them with both chunks; evaluation metrics therefore differ after a short
run, and the test only checks that rank 0 evaluated.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

torch.set_num_threads(1)

TINY = ["--encoder", "test_resnet", "--no-pretrained", "--size", "64", "--epochs", "2", "--batch-size", "8",
        "--lr", "0.01", "--no-augment"]


def _env() -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    env.pop("WORLD_SIZE", None)
    return env


@pytest.mark.slow
def test_two_processes_equal_one_process_with_accumulation(data, tmp_path):
    two, one = tmp_path / "two", tmp_path / "one"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "wsm", "-q", "train", "--data", str(data), "--out", str(two), *TINY]
    proc = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    proc = subprocess.run([sys.executable, "-m", "wsm", "-q", "train", "--data", str(data), "--out", str(one),
                           *TINY, "--accumulate", "2"], env=_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]

    m2, m1 = (json.loads((d / "metrics.json").read_text()) for d in (two, one))
    assert json.loads((two / "train_config.json").read_text())["world_size"] == 2
    assert m2["config"]["world_size"] == 2 and m1["config"]["world_size"] == 1
    assert m2["n_train"] == m1["n_train"] == 24 and m2["metrics"]["n_images"] == 8
    assert m2["train_losses"] == pytest.approx(m1["train_losses"], rel=1e-6)

    w2, w1 = load_file(two / "model.safetensors"), load_file(one / "model.safetensors")
    assert w2.keys() == w1.keys()
    buffers = ("running_mean", "running_var", "num_batches_tracked")
    compared = [k for k in w1 if not k.endswith(buffers)]
    assert len(compared) > 20
    for key in compared:
        torch.testing.assert_close(w2[key], w1[key], rtol=1e-5, atol=1e-6, msg=key)
    # only rank 0 wrote: one set of outputs, no stray files
    assert sorted(p.name for p in two.iterdir()) == sorted(p.name for p in one.iterdir())
