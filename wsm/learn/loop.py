"""One small training loop, for every network wsm trains (`wsm fit`'s classifier and prior, `wsm train`'s).

- AdamW (no weight decay on biases and normalisation weights), cosine learning-rate decay per step to 0, after an
  optional linear warm-up (``warmup_fraction`` of the steps). A pretrained encoder (the parameters under a
  submodule named ``encoder``) can learn at ``encoder_lr_scale`` times the rate of the new layers.
- Losses: :func:`classification_loss` is cross-entropy weighted by inverse class frequency (``N / (K n_c)``, the
  "balanced" weights). It was chosen over a WeightedRandomSampler because every image is then seen exactly once per
  epoch, epochs stay comparable, and the data order is a plain seeded shuffle. Segmentation losses (255 ignored) are in
  :mod:`wsm.learn.losses`.
- ``out_dir/checkpoint.pt`` (model, optimizer, scheduler, grad scaler, epoch, loss history, torch RNG states, config)
  is written atomically every ``checkpoint_every`` epochs and after the last one. A run whose out_dir holds a
  checkpoint resumes from it; on the CPU the result is bit-identical to an uninterrupted run, because the data order
  of epoch e is drawn from a generator seeded with (seed, e) and each item's augmentation from (seed, e, index).
- ``out_dir/model.safetensors`` (final weights, :func:`save_weights`; in its header the network's description,
  :mod:`wsm.models.card`, with the dataset's ``final_size`` as the input size) and ``out_dir/train_config.json``.
- Mixed precision (float16 autocast + gradient scaling) only when the device is CUDA and ``amp`` is set.
- Progress: a tqdm bar per epoch on stderr; a log line per epoch on the ``wsm.learn.loop`` logger.

- Gradient accumulation: ``accumulate`` > 1 splits every batch into that many chunks (items ``c::accumulate``),
  one forward / backward each, one optimiser step per batch. BatchNorm then sees a chunk, not the whole batch.
- Multi-process (DDP): when ``torch.distributed`` is initialised with more than one process (``wsm.train`` does it
  under torchrun), the model is wrapped in ``DistributedDataParallel`` and :class:`DistributedBatchSampler` gives
  each process its share of every batch: ``batch_size`` stays the number of images per optimiser step, over all
  processes, and the batches are exactly the 1-process run's. Each process's loss is scaled by its share of the
  batch, so the averaged gradient is the gradient of the batch mean. Hence N processes with ``accumulate=1``
  compute what one process computes with ``accumulate=N`` (BatchNorm over each process's share in both), up to
  floating-point summation order (tests/wsm/train/test_train_ddp.py). BatchNorm running statistics are rank 0's (DDP
  broadcasts its buffers), so they differ from a 1-process run's. On CUDA, ``sync_batchnorm`` (default) converts
  BatchNorm to SyncBatchNorm: statistics over the whole batch, as one process without accumulation computes them.
  Only rank 0 writes files and shows progress; every rank reads the checkpoint to resume, so the output folder
  must be shared.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
import re
import struct
import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_model, save_model
from torch import nn
from torch.utils.data import DataLoader, Dataset, Sampler

from wsm.io.atomic import atomic_path, write_json
from wsm.io.progress import progress as progress_bar
from wsm.models.card import network_card, record_input_size

__all__ = [
    "CHECKPOINT_NAME",
    "DistributedBatchSampler",
    "TrainConfig",
    "seconds_per_step",
    "TrainResult",
    "WEIGHTS_NAME",
    "class_weights",
    "classification_loss",
    "load_weights",
    "save_network",
    "save_weights",
    "train",
]

log = logging.getLogger(__name__)

CHECKPOINT_NAME = "checkpoint.pt"
WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "train_config.json"

# Settings a checkpoint must share with the run that resumes it (the others, e.g. device or workers, may change).
_RESUME_KEYS = ("epochs", "batch_size", "lr", "weight_decay", "seed", "encoder_lr_scale", "warmup_fraction")
_RESUME_DEFAULTS = {"encoder_lr_scale": 1.0, "warmup_fraction": 0.0}


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 10              # passes over the dataset
    batch_size: int = 32          # images per optimiser step
    lr: float = 1e-3              # AdamW peak learning rate (cosine decay to 0 over all steps)
    weight_decay: float = 1e-4    # AdamW decoupled weight decay (not on biases or norm weights)
    num_workers: int = 0          # DataLoader worker processes (0: load in the main process)
    seed: int = 0                 # model init is the caller's; this seeds data order, augmentation, dropout
    device: str = "cpu"           # "cpu", "cuda", "cuda:1", ...
    amp: bool = True              # float16 mixed precision; only ever used when the device is CUDA
    checkpoint_every: int = 1     # epochs between checkpoints (the last epoch always writes one)
    deterministic: bool = True    # torch.use_deterministic_algorithms (warn-only) during training
    accumulate: int = 1           # chunks per batch (gradient accumulation); BatchNorm sees one chunk at a time
    sync_batchnorm: bool = True   # under DDP on CUDA: SyncBatchNorm (statistics over the whole batch); CPU: no
    encoder_lr_scale: float = 1.0  # learning rate of the ``encoder`` submodule's parameters, times lr
    warmup_fraction: float = 0.0   # of all steps: the rate rises linearly from 0 before the cosine decay

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "checkpoint_every", "accumulate"):
            if getattr(self, name) < 1:
                raise ValueError(f"TrainConfig.{name} must be at least 1, got {getattr(self, name)}")
        if self.num_workers < 0:
            raise ValueError(f"TrainConfig.num_workers must be >= 0, got {self.num_workers}")
        if self.encoder_lr_scale <= 0:
            raise ValueError(f"TrainConfig.encoder_lr_scale must be > 0, got {self.encoder_lr_scale}")
        if not 0 <= self.warmup_fraction < 1:
            raise ValueError(f"TrainConfig.warmup_fraction must be in [0, 1), got {self.warmup_fraction}")


@dataclass
class TrainResult:
    weights: Path                     # out_dir/model.safetensors
    checkpoint: Path                  # out_dir/checkpoint.pt
    epoch_losses: list[float]         # mean training loss of every epoch, the resumed ones included
    resumed_from: int                 # epochs already done when this call started (0: fresh run)
    seconds: float                    # wall time of this call


# --------------------------------------------------------------------------------------------------- losses

def class_weights(counts) -> torch.Tensor:
    """Inverse-frequency ("balanced") weights ``N / (K n_c)`` over the K classes present; 0 for absent classes."""
    counts = torch.as_tensor(np.asarray(counts), dtype=torch.float64)
    present = counts > 0
    if not present.any():
        raise ValueError("no class has any example: nothing to train on")
    weights = torch.zeros_like(counts)
    weights[present] = counts.sum() / (present.sum() * counts[present])
    return weights.float()


def classification_loss(counts) -> nn.Module:
    """Cross-entropy weighted by :func:`class_weights` of the training set's class counts."""
    return nn.CrossEntropyLoss(weight=class_weights(counts))


# --------------------------------------------------------------------------------------------------- weights

def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if hasattr(model, "module") and isinstance(model.module, nn.Module) else model


def save_weights(model: nn.Module, path: str | os.PathLike, metadata: Mapping[str, str] | None = None) -> Path:
    """Write the model's state dict as safetensors, atomically; ``metadata`` (str -> str) goes in the header, in
    sorted order: the same weights and metadata always give the same bytes."""
    path = Path(path)
    with atomic_path(path) as tmp, _os_error_of_safetensors(path):
        save_model(_unwrap(model), str(tmp), metadata=dict(metadata) if metadata else None)
        if metadata and len(metadata) > 1:
            _sort_metadata(Path(tmp))
    return path


def save_network(model: nn.Module, path: str | os.PathLike) -> Path:
    """A network's final weights (:func:`save_weights`), with its description (:mod:`wsm.models.card`) in the header
    when it carries one: RUN/model.safetensors and a bundle's networks alike."""
    return save_weights(model, path, network_card(model))


def _sort_metadata(path: Path) -> None:
    """Sort the header metadata of a safetensors file, in place. safetensors writes it in a random order (a Rust
    HashMap), so that two saves of the same network would differ; sorted, the header keeps its
    length and every tensor its offset. A header serialised otherwise than expected is left as it is."""
    with open(path, "r+b") as fh:
        (size,) = struct.unpack("<Q", fh.read(8))
        text = fh.read(size)
        header = json.loads(text)
        header["__metadata__"] = dict(sorted(header["__metadata__"].items()))
        canonical = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf8")
        if len(canonical) == len(text.rstrip(b" ")):
            fh.seek(8)
            fh.write(canonical)


@contextlib.contextmanager
def _os_error_of_safetensors(path: Path):
    """safetensors reports a failed write (a full disk) as a SafetensorError with the errno only in its text: raise
    the OSError it stands for."""
    try:
        yield
    except SafetensorError as err:
        code = re.search(r"os error (\d+)", str(err))
        if code is None:
            raise
        raise OSError(int(code[1]), os.strerror(int(code[1])), str(path)) from err


def load_weights(model: nn.Module, path: str | os.PathLike, strict: bool = True) -> dict[str, str]:
    """Load safetensors weights into ``model`` (onto its device); return the file's metadata."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file {path} does not exist")
    target = _unwrap(model)
    device = next(target.parameters()).device
    missing, unexpected = load_model(target, str(path), strict=strict, device=str(device))
    if missing or unexpected:
        log.warning("%s: %d missing and %d unexpected keys", path, len(missing), len(unexpected))
    with safe_open(str(path), framework="pt") as fh:
        return dict(fh.metadata() or {})


def load_network(path: str | os.PathLike, wanted, asked_by: str, ignore: Collection[str] = ()) -> nn.Module:
    """The network saved at ``path``, built from the card its file carries once it agrees with ``wanted`` (a
    :class:`wsm.models.card.NetworkCard`; :func:`wsm.models.card.checked_card`), with its weights loaded."""
    from wsm.models.card import checked_card

    model = checked_card(path, wanted, asked_by, ignore=ignore).build()
    load_weights(model, path)
    return model


# --------------------------------------------------------------------------------------------------- training

def _epoch_seed(seed: int, epoch: int) -> int:
    return int(np.random.SeedSequence([seed, epoch]).generate_state(1, dtype=np.uint64)[0] >> 1)


def _worker_init(worker_id: int) -> None:
    torch.set_num_threads(1)
    np.random.seed(torch.initial_seed() % 2**32)


def _param_groups(model: nn.Module, weight_decay: float, lr: float, encoder_lr_scale: float = 1.0) -> list[dict]:
    """AdamW groups: weight decay on weights only (decayed group first), and with ``encoder_lr_scale`` != 1 the
    ``encoder`` submodule's parameters in groups of their own at that times lr."""
    groups: dict[tuple[bool, bool], list] = {}
    for name, p in model.named_parameters():
        if p.requires_grad:
            scaled = encoder_lr_scale != 1.0 and name.startswith("encoder.")
            groups.setdefault((scaled, p.ndim <= 1), []).append(p)
    return [{"params": params, "weight_decay": 0.0 if no_decay else weight_decay,
             "lr": lr * (encoder_lr_scale if scaled else 1.0)}
            for (scaled, no_decay), params in sorted(groups.items())]


def lr_factor(step: int, total_steps: int, warmup_fraction: float = 0.0) -> float:
    """The learning rate at ``step`` as a fraction of its peak: linear warm-up, then cosine decay to 0."""
    warmup = int(warmup_fraction * total_steps)
    if step < warmup:
        return (step + 1) / warmup
    progress = min(step - warmup, total_steps - warmup) / max(1, total_steps - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def _rng_state() -> dict:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: Mapping) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _world() -> tuple[int, int]:
    """(world size, rank) of the initialised process group, (1, 0) without one."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size(), dist.get_rank()
    return 1, 0


class DistributedBatchSampler(Sampler[list[int]]):
    """This process's share of every batch of one epoch, for DDP.

    The epoch's batches are the 1-process loader's (``DataLoader(shuffle=True, generator=seeded with (seed,
    epoch))``: the same permutation, cut into ``batch_size`` runs); process ``rank`` of ``world_size`` takes items
    ``rank::world_size`` of each. Unlike ``torch.utils.data.DistributedSampler`` nothing is padded or repeated and
    the global batches do not depend on the number of processes, so a run can resume on another number of
    processes and compare with a 1-process run. A last batch with fewer items than processes is dropped (a process
    cannot take part in a step with no image).
    """

    def __init__(self, n_items: int, batch_size: int, seed: int, epoch: int, world_size: int = 1, rank: int = 0):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} out of range for world size {world_size}")
        generator = torch.Generator().manual_seed(_epoch_seed(seed, epoch))
        # as the 1-process loader: its iterator first draws the workers' base seed from the generator, then its
        # RandomSampler draws the permutation (tests/wsm/train/test_train.py checks that the batches agree)
        torch.empty((), dtype=torch.int64).random_(generator=generator)
        perm = torch.randperm(n_items, generator=generator).tolist()
        batches = [perm[i:i + batch_size] for i in range(0, n_items, batch_size)]
        if batches and len(batches[-1]) < world_size:
            log.warning("dropping the last batch of %d images: fewer than the %d processes", len(batches[-1]),
                        world_size)
            batches.pop()
        self.global_batches = batches
        self.world_size, self.rank = world_size, rank

    def __iter__(self):
        for batch in self.global_batches:
            yield batch[self.rank::self.world_size]

    def __len__(self) -> int:
        return len(self.global_batches)


def _accumulate_step(net: nn.Module, inputs: torch.Tensor, targets: torch.Tensor, loss_fn, scaler,
                     accumulate: int, world: int, global_size: int, device: torch.device, use_amp: bool) -> float:
    """Forward / backward of one step in chunks (and across processes); returns the sum of item losses here.

    Chunk c holds items ``c::accumulate`` of this process's share; its loss is scaled by ``n_chunk * world /
    global_size`` so that the summed (DDP: averaged over processes) gradient is the gradient of the mean loss
    over the whole batch. DDP synchronises gradients on the last non-empty chunk only.
    """
    chunks = [c for c in range(accumulate) if len(inputs[c::accumulate])]
    total = 0.0
    for i, c in enumerate(chunks):
        x, y = inputs[c::accumulate], targets[c::accumulate]
        last = i == len(chunks) - 1
        sync = contextlib.nullcontext() if last or not hasattr(net, "no_sync") else net.no_sync()
        with sync:
            with torch.autocast(device_type=device.type, dtype=torch.float16, enabled=use_amp):
                outputs = net(x)
            loss = loss_fn(outputs.float(), y)
            scaler.scale(loss * (len(x) * world / global_size)).backward()
        total += float(loss.detach()) * len(x)
    return total


def seconds_per_step(model: nn.Module, dataset: Dataset, loss_fn, cfg: TrainConfig) -> float:
    """One training step's cost on this machine, measured without changing anything: a batch of real items (read
    as the first epoch reads them), forward and backward in eval mode (no BatchNorm statistics move), gradients
    dropped. The second of two tries is timed (the first pays for allocation)."""
    device = torch.device(cfg.device)
    if cfg.deterministic and device.type == "cuda":     # cuBLAS reads it once, at its first use: as train() sets it
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    model.to(device)
    if isinstance(loss_fn, nn.Module):
        loss_fn.to(device)
    was_training = model.training
    model.eval()
    n = min(cfg.batch_size, len(dataset))
    try:
        for _ in range(2):
            started = time.perf_counter()
            items = [dataset[i] for i in range(n)]
            inputs = torch.stack([x for x, _ in items]).to(device)
            targets = torch.stack([torch.as_tensor(y) for _, y in items]).to(device)
            loss_fn(model(inputs).float(), targets).backward()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            elapsed = time.perf_counter() - started
    finally:
        model.zero_grad(set_to_none=True)
        model.train(was_training)
    return elapsed


def train(model: nn.Module, dataset: Dataset, loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
          cfg: TrainConfig, out_dir: str | os.PathLike, progress: bool = True, phase: str = "") -> TrainResult:
    """Train ``model`` in place on ``dataset`` (items ``(input, target)``), resuming from out_dir's checkpoint.

    ``loss_fn(outputs, targets)`` returns a scalar (computed in float32). A dataset with ``set_epoch(e)`` is told the
    epoch before each one. A checkpoint from a finished run just gives its weights back.

    Raises:
        ValueError: the checkpoint in out_dir was written with different settings (see ``_RESUME_KEYS``) or for a
            dataset of another size; delete it or use another out_dir.
    """
    started = time.perf_counter()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    ckpt_path, weights_path = out_dir / CHECKPOINT_NAME, out_dir / WEIGHTS_NAME
    run = _set_up(model, dataset, loss_fn, cfg)
    torch.manual_seed(cfg.seed)
    start_epoch, losses = _resume(run, ckpt_path)
    if run.rank == 0:
        write_json(out_dir / CONFIG_NAME, dict(run.config, world_size=run.world))
    with _deterministic(cfg.deterministic, run.device):
        for epoch in range(start_epoch, cfg.epochs):
            losses.append(_train_epoch(run, dataset, loss_fn, epoch, progress and run.rank == 0, phase))
            if run.rank == 0:
                log.info("epoch %d/%d: loss %.4f", epoch + 1, cfg.epochs, losses[-1])
                if (epoch + 1) % cfg.checkpoint_every == 0 or epoch + 1 == cfg.epochs:
                    _save_checkpoint(run, ckpt_path, epoch + 1, losses)
    _save_final(run, dataset, weights_path)
    return TrainResult(weights=weights_path, checkpoint=ckpt_path, epoch_losses=losses, resumed_from=start_epoch,
                       seconds=time.perf_counter() - started)


@dataclass
class _Run:
    """What one call of :func:`train` trains with (:func:`_set_up`)."""
    cfg: TrainConfig
    model: nn.Module                  # the caller's model (under DDP on CUDA: its BatchNorm made SyncBatchNorm)
    net: nn.Module                    # what runs forward: the model, or its DistributedDataParallel wrapper
    device: torch.device
    use_amp: bool
    world: int
    rank: int
    n_items: int
    steps_per_epoch: int
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    config: dict                      # the settings a checkpoint records: ``cfg`` and ``num_items``


def _set_up(model: nn.Module, dataset: Dataset, loss_fn, cfg: TrainConfig) -> _Run:
    """The model (and the loss) on the device, wrapped for DDP under several processes; the optimiser, the
    learning-rate schedule over every step of the run, the gradient scaler."""
    n_items = len(dataset)
    if n_items == 0:
        raise ValueError("the training dataset is empty")
    device = torch.device(cfg.device)
    use_amp = cfg.amp and device.type == "cuda"
    world, rank = _world()
    if world > 1 and cfg.batch_size < world:
        raise ValueError(f"batch_size {cfg.batch_size} is the number of images per step over all {world} processes; "
                         f"it must be at least {world}")
    steps_per_epoch = (len(DistributedBatchSampler(n_items, cfg.batch_size, cfg.seed, 0, world, rank)) if world > 1
                       else math.ceil(n_items / cfg.batch_size))
    total_steps = steps_per_epoch * cfg.epochs

    model.to(device)
    net = model
    if world > 1 and not isinstance(model, nn.parallel.DistributedDataParallel):
        if cfg.sync_batchnorm and device.type == "cuda":   # torch's SyncBatchNorm has no CPU implementation
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)   # in place below the top module
        net = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    if isinstance(loss_fn, nn.Module):
        loss_fn.to(device)
    optimizer = torch.optim.AdamW(_param_groups(model, cfg.weight_decay, cfg.lr, cfg.encoder_lr_scale), lr=cfg.lr)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, total_steps, cfg.warmup_fraction))
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    return _Run(cfg, model, net, device, use_amp, world, rank, n_items, steps_per_epoch, optimizer, scheduler, scaler,
                config=dict(dataclasses.asdict(cfg), num_items=n_items))


def _resume(run: _Run, ckpt_path: Path) -> tuple[int, list[float]]:
    """Load the checkpoint, if there is one: model, optimiser, schedule, scaler and RNG states. Returns the epochs
    it had done and their losses ((0, []) without one)."""
    if not ckpt_path.exists():
        return 0, []
    state = torch.load(ckpt_path, map_location="cpu", weights_only=True)  # RNG states must stay on the CPU
    saved = {**_RESUME_DEFAULTS, **state["config"]}   # checkpoints written before a key existed ran at its default
    diff = {k: (saved.get(k), run.config[k]) for k in (*_RESUME_KEYS, "num_items") if saved.get(k) != run.config[k]}
    if diff:
        raise ValueError(
            f"{ckpt_path} was written by a run with other settings (checkpoint, now): {diff}; "
            "resume with the same settings, or delete the checkpoint (or use another output folder) to start over"
        )
    _unwrap(run.model).load_state_dict(state["model"])
    run.optimizer.load_state_dict(state["optimizer"])
    run.scheduler.load_state_dict(state["scheduler"])
    run.scaler.load_state_dict(state["scaler"])
    _set_rng_state(state["rng"])
    log.info("resuming from %s after epoch %d of %d", ckpt_path, int(state["epoch"]), run.cfg.epochs)
    return int(state["epoch"]), [float(x) for x in state["losses"]]


@contextlib.contextmanager
def _deterministic(enabled: bool, device: torch.device):
    """torch's deterministic algorithms (warn-only; on CUDA also cuBLAS's fixed workspace and no cuDNN benchmark)
    while training, the caller's settings restored after."""
    if not enabled:
        yield
        return
    previous = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled())
    previous_benchmark = torch.backends.cudnn.benchmark
    if device.type == "cuda":
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.backends.cudnn.benchmark = False
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous[0], warn_only=previous[1])
        torch.backends.cudnn.benchmark = previous_benchmark


def _epoch_loader(run: _Run, dataset: Dataset, epoch: int) -> tuple[DataLoader, list[int] | None]:
    """Epoch ``epoch``'s batches (a permutation drawn from (seed, epoch)), and under DDP the size of every global
    batch (this process loads its share of each)."""
    cfg = run.cfg
    generator = torch.Generator().manual_seed(_epoch_seed(cfg.seed, epoch))  # DDP: the workers' base seed
    if run.world > 1:
        sampler = DistributedBatchSampler(run.n_items, cfg.batch_size, cfg.seed, epoch, run.world, run.rank)
        loader = DataLoader(dataset, batch_sampler=sampler, num_workers=cfg.num_workers,
                            worker_init_fn=_worker_init, pin_memory=run.device.type == "cuda", generator=generator)
        return loader, [len(b) for b in sampler.global_batches]
    loader = DataLoader(dataset, batch_size=cfg.batch_size, shuffle=True, generator=generator,
                        num_workers=cfg.num_workers, worker_init_fn=_worker_init,
                        pin_memory=run.device.type == "cuda", drop_last=False)
    return loader, None


def _train_epoch(run: _Run, dataset: Dataset, loss_fn, epoch: int, progress: bool, phase: str) -> float:
    """One pass over the dataset, one optimiser step per batch; the epoch's mean item loss (over every process)."""
    cfg = run.cfg
    if hasattr(dataset, "set_epoch"):
        dataset.set_epoch(epoch)
    loader, global_sizes = _epoch_loader(run, dataset, epoch)
    run.model.train()
    total, seen = 0.0, 0
    bar = progress_bar(loader, total=run.steps_per_epoch, desc=f"{phase}epoch {epoch + 1}/{cfg.epochs}".lstrip(),
                       enabled=progress, leave=False)
    for step, (inputs, targets) in enumerate(bar):
        total += _train_step(run, inputs, targets, loss_fn, global_sizes[step] if global_sizes else len(inputs))
        seen += len(inputs)
        bar.set_postfix(loss=f"{total / max(seen, 1):.4f}")
    bar.close()
    if run.world > 1:
        import torch.distributed as dist

        sums = torch.tensor([total, float(seen)], dtype=torch.float64, device=run.device)
        dist.all_reduce(sums)
        total, seen = float(sums[0]), int(round(float(sums[1])))
    return total / seen


def _train_step(run: _Run, inputs: torch.Tensor, targets: torch.Tensor, loss_fn, global_size: int) -> float:
    """One optimiser step on a batch (this process's share of ``global_size`` items); the sum of its item losses."""
    device = run.device
    inputs = inputs.to(device, non_blocking=True)
    targets = targets.to(device, non_blocking=True)
    run.optimizer.zero_grad(set_to_none=True)
    if run.world == 1 and run.cfg.accumulate == 1:   # the plain step (bit-identical to earlier versions)
        with torch.autocast(device_type=device.type, dtype=torch.float16, enabled=run.use_amp):
            outputs = run.net(inputs)
        loss = loss_fn(outputs.float(), targets)
        run.scaler.scale(loss).backward()
        total = float(loss.detach()) * len(inputs)
    else:
        total = _accumulate_step(run.net, inputs, targets, loss_fn, run.scaler, run.cfg.accumulate, run.world,
                                 global_size, device, run.use_amp)
    run.scaler.step(run.optimizer)
    run.scaler.update()
    run.scheduler.step()
    return total


def _save_checkpoint(run: _Run, ckpt_path: Path, epochs_done: int, losses: list[float]) -> None:
    """Everything a resumed run needs after ``epochs_done`` epochs, written atomically."""
    state = {
        "model": _unwrap(run.model).state_dict(),
        "optimizer": run.optimizer.state_dict(),
        "scheduler": run.scheduler.state_dict(),
        "scaler": run.scaler.state_dict(),
        "epoch": epochs_done,
        "losses": losses,
        "rng": _rng_state(),
        "config": run.config,
    }
    with atomic_path(ckpt_path) as tmp, open(tmp, "wb") as fh:
        torch.save(state, fh)    # through a Python file: a full disk raises OSError (under torch's error)


def _save_final(run: _Run, dataset: Dataset, weights_path: Path) -> None:
    """The final weights (rank 0), with the network's description (wsm.models.card) and the input size it
    trained at (a wsm dataset's ``final_size``); under DDP every rank waits until they are on disk."""
    if run.rank == 0:
        record_input_size(run.model, getattr(dataset, "final_size", None))
        save_network(run.model, weights_path)
    if run.world > 1:
        import torch.distributed as dist

        dist.barrier()
