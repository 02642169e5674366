"""Train an embedding tower with a metric-learning objective and export it to model_store/.

    make train DATASET=folder:/data/signatures NAME=signatures ARGS="--channels 1 --image-size 64"
    python -m training.train --dataset folder:/data/signatures --channels 1 --image-size 64
                                                      # the same: exports model_store/signatures
    python -m training.train --preset mnist --out runs/mnist     # make train-mnist: shipped recipe
    python -m training.train --preset seed-fashion --out runs/seed-fashion/model  # Keras tutorial
    torchrun --nproc-per-node 2 -m training.train ...                        # DDP

One loop, top to bottom: data as uint8 tensors in memory, whole-batch augmentation, a tower whose
forward is the exported contract (uint8 in, embedding out), a loss from pytorch-metric-learning,
validation AUC each epoch, a checkpoint each epoch (``--resume`` continues), then calibration on the
validation split, a refusal if validation shows a collapsed tower (``--force``), test metrics in
float32 and bfloat16, export (app/artifact.py) and plots. docs/training.md explains the guards.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from app import artifact
from app.config import usable_cores
from training.calibrate import balanced_pairs, calibrate, pair_distances, verification_metrics
from training.config import TrainConfig, parse_args
from training.data import DataBundle, DataError, Split, augment, load_dataset
from training.evaluate import compute_metrics, embed_all, subset_metrics
from training.losses import (
    CLASSIFIER_LOSSES,
    RAW_EMBEDDING_LOSSES,
    LossSpec,
    SmoothedSoftmaxLoss,
    build_loss,
)
from training.nets import Tower, build_tower
from training.reference_stats import embedding_stats

log = logging.getLogger("training")

DATA_STATS = {  # per-channel mean/std of the training images, in [0, 1] units
    "mnist": ([0.1307], [0.3081]),
    "fashion-mnist": ([0.2860], [0.3530]),
    "cifar10": ([0.4914, 0.4822, 0.4465], [0.2470, 0.2435, 0.2616]),
}


class TrainModel(nn.Module):
    """Tower + loss in one module, so DistributedDataParallel syncs the loss's class centres too."""

    def __init__(self, tower: Tower, loss: nn.Module, raw_embedding: bool = False) -> None:
        super().__init__()
        self.tower = tower
        self.loss = loss
        self.raw_embedding = raw_embedding  # the loss wants the embedding before normalisation

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.loss(self.tower.embed(x) if self.raw_embedding else self.tower(x), y)


class Lookahead:
    """airbench's lookahead: every ``every`` steps, a slow copy of all float state moves toward the
    weights by (1 - decay) and the weights jump back onto it; decay ramps up (cubically) over the
    run, and at the end the weights become the slow copy."""

    def __init__(self, model: nn.Module, total_steps: int, every: int = 5) -> None:
        self.model = model
        self.slow = {k: v.detach().clone() for k, v in model.state_dict().items()}
        self.total, self.every = total_steps, every

    def step(self, step: int) -> None:
        if step % self.every == 0:
            self._pull(0.95**self.every * (step / self.total) ** 3)

    def finish(self) -> None:
        self._pull(1.0)

    @torch.no_grad()
    def _pull(self, decay: float) -> None:
        for k, v in self.model.state_dict().items():
            if v.is_floating_point():
                self.slow[k].lerp_(v, 1 - decay)
                v.copy_(self.slow[k])


def build_model(
    cfg: TrainConfig,
    shape: tuple[int, int, int],
    num_classes: int,
    mean: list[float],
    std: list[float],
) -> tuple[TrainModel, torch.optim.Optimizer]:
    """Tower + loss (channels_last) and their optimiser, exactly as the recipe in ``cfg`` says."""
    c, h, w = shape
    tower = build_tower(
        cfg.arch,
        channels=c,
        height=h,
        width=w,
        embedding_dim=cfg.embedding_dim,
        widths=cfg.widths,
        mean=mean,
        std=std,
        normalize=cfg.normalize,
        flip_tta=cfg.flip_tta,
        shift_tta=cfg.shift_tta,
    )
    if cfg.loss in CLASSIFIER_LOSSES and not cfg.normalize:
        raise SystemExit(f"--loss {cfg.loss} needs --normalize true (it works on the unit sphere)")
    spec = LossSpec(
        cfg.loss, cfg.margin, cfg.scale, cfg.temperature, cfg.normalize, cfg.label_smoothing
    )
    model = TrainModel(
        tower,
        build_loss(spec, num_classes, cfg.embedding_dim),
        raw_embedding=cfg.loss in RAW_EMBEDDING_LOSSES,
    )
    model = model.to(memory_format=torch.channels_last)
    # Three groups: weights; BatchNorm shifts; the whitening stem's bias (its lr drops to 0 after
    # whiten_bias_epochs, see lr_lambdas). Biases take lr x bias_lr_scale, same decoupled decay.
    norm_shifts = [
        m.bias for m in model.modules() if isinstance(m, nn.BatchNorm2d) and m.bias.requires_grad
    ]
    whiten = getattr(tower.backbone, "whiten", None)
    whiten_bias = [whiten.bias] if whiten is not None else []
    special = {id(p) for p in norm_shifts + whiten_bias}
    weights = [p for p in model.parameters() if p.requires_grad and id(p) not in special]
    k = cfg.bias_lr_scale
    groups = [
        {"params": weights, "lr": cfg.lr, "weight_decay": cfg.weight_decay},
        {"params": norm_shifts, "lr": cfg.lr * k, "weight_decay": cfg.weight_decay / k},
        {"params": whiten_bias, "lr": cfg.lr * k, "weight_decay": cfg.weight_decay / k},
    ]
    if cfg.optimizer == "sgd":
        opt: torch.optim.Optimizer = torch.optim.SGD(
            groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=True
        )
    elif cfg.optimizer == "adamw":
        opt = torch.optim.AdamW(groups, lr=cfg.lr)
    else:  # rmsprop, with Keras's defaults (rho 0.9, eps 1e-7)
        opt = torch.optim.RMSprop(groups, lr=cfg.lr, alpha=0.9, eps=1e-7)
    return model, opt


def readout_tower(tower: Tower, loss: nn.Module, readout: str, temperature: float = 1.0) -> Tower:
    """The tower to export. ``features``: as trained. ``logits`` (softmax loss): the classifier
    becomes its head, so the embedding is the L2-normalised vector of class scores (summed over
    the TTA views, as the head is linear). ``probabilities``: class scores through a softmax at
    ``temperature``, square-rooted: a unit vector whose distance is the Hellinger distance between
    the two images' class distributions (times sqrt 2). The scores are the softmax classifier's
    on the summed views, or for CosFace/ArcFace the cosines between the normalised embedding and
    the normalised class weights the loss learnt.

    Why probabilities: verification at a low false-accept rate is decided by the closest impostor
    pairs, which for a class-score readout are confidently misclassified images. Normalising raw
    scores maps every confident image of a class to nearly one point, so an image confidently in
    the wrong class lands on it; probabilities keep how unsure the tower was. Both class readouts
    know nothing beyond the training classes: for unseen ones the features are the better one."""
    if readout == "features":
        return tower
    exported = copy.deepcopy(tower)
    inner = loss.loss
    if isinstance(inner, SmoothedSoftmaxLoss):
        exported.head = copy.deepcopy(inner.classifier)  # Linear(features, classes), no bias
        if readout == "probabilities":
            exported.normalize = False  # the softmax reads the raw scores
    else:  # CosFace / ArcFace: W is (D, classes), compared by cosine
        weights = F.normalize(inner.W.detach(), dim=0).T.contiguous()
        exported.scores = nn.Linear(weights.shape[1], weights.shape[0], bias=False)
        exported.scores.weight.data.copy_(weights)
    if readout == "probabilities":
        exported.probability_temperature = temperature
    return exported


def pick_device(name: str) -> torch.device:
    if name != "auto":
        return torch.device(name)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def channel_stats(dataset: str, images: torch.Tensor) -> tuple[list[float], list[float]]:
    if dataset in DATA_STATS:
        return DATA_STATS[dataset]
    x = images[:10_000].float() / 255  # (n, C, H, W)
    return x.mean(dim=(0, 2, 3)).tolist(), x.std(dim=(0, 2, 3)).clamp_min(1e-3).tolist()


def epoch_batches(
    labels: torch.Tensor, cfg: TrainConfig, epoch: int, rank: int, world: int
) -> list[torch.Tensor]:
    """Index batches for one epoch, identical on every rank, each rank taking its own slice."""
    g = torch.Generator().manual_seed(cfg.seed * 1000 + epoch)
    n = len(labels)
    if cfg.m_per_class > 0:
        from pytorch_metric_learning.samplers import MPerClassSampler

        torch.manual_seed(cfg.seed * 1000 + epoch)  # the sampler draws from the global generator
        sampler = MPerClassSampler(
            labels, m=cfg.m_per_class, batch_size=cfg.batch_size, length_before_new_iter=n
        )
        order = torch.tensor(list(iter(sampler)))
    else:
        order = torch.randperm(n, generator=g)
    per_step = cfg.batch_size * world
    steps = len(order) // per_step  # drop the ragged tail: BatchNorm and miners want full batches
    return [
        order[s * per_step + rank * cfg.batch_size : s * per_step + (rank + 1) * cfg.batch_size]
        for s in range(steps)
    ]


def lr_lambda(total_steps: int, warmup: float, stop_at: int | None = None):
    warm = max(1, int(total_steps * warmup))

    def f(step: int) -> float:  # triangle: 0 -> 1 over warm steps, then linearly to 0
        if stop_at is not None and step >= stop_at:
            return 0.0
        if step < warm:
            return (step + 1) / warm
        return max(0.0, (total_steps - step) / max(1, total_steps - warm))

    return f


def lr_lambdas(cfg: TrainConfig, steps_per_epoch: int) -> list:
    """One schedule per optimiser group (build_model): the whitening bias stops learning early."""
    total = steps_per_epoch * cfg.epochs
    f = lr_lambda(total, cfg.warmup)
    return [f, f, lr_lambda(total, cfg.warmup, stop_at=steps_per_epoch * cfg.whiten_bias_epochs)]


@torch.no_grad()
def validate(tower: Tower, val: Split, device: torch.device) -> dict[str, float]:
    emb = embed_all(tower, val.images.to(device)).cpu()
    a, b, same = balanced_pairs(val.labels, seed=0)
    d = pair_distances(emb, a, b)
    threshold, _ = calibrate(d, same.numpy(), table_points=3)
    m = verification_metrics(d, same.numpy(), threshold)
    return {"val_auc": m["roc_auc"], "val_acc": m["accuracy"], "val_eer": m["eer"]}


def train_one_epoch(
    model: nn.Module,
    opt: torch.optim.Optimizer,
    sched,
    data: Split,
    cfg: TrainConfig,
    epoch: int,
    device: torch.device,
    rank: int,
    world: int,
    lookahead: Lookahead | None = None,
) -> dict[str, float]:
    model.train()
    g = torch.Generator().manual_seed(cfg.seed * 7919 + epoch * 31 + rank)
    batches = epoch_batches(data.labels, cfg, epoch, rank, world)
    bar = tqdm(
        batches,
        desc=f"epoch {epoch + 1}/{cfg.epochs}",
        disable=rank != 0 or not batches,
        mininterval=2,
        file=sys.stderr,
    )
    t0, seen, total = time.perf_counter(), 0, 0.0
    for idx in bar:
        x = augment(
            data.images[idx],
            translate=cfg.translate,
            flip=cfg.flip,
            generator=g,
            pad=cfg.pad,
            erase=cfg.erase,
        ).to(device, non_blocking=True)
        y = data.labels[idx].to(device, non_blocking=True)
        loss = model(x, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if lookahead is not None:
            lookahead.step(sched.last_epoch)
        seen += len(idx) * world
        total += loss.item()  # a device sync point; cheap next to the CPU step
        bar.set_postfix(
            loss=f"{loss.item():.4f}",
            img_s=f"{seen / (time.perf_counter() - t0):.0f}",
            lr=f"{sched.get_last_lr()[0]:.3g}",
        )
    secs = time.perf_counter() - t0
    return {
        "loss": total / max(1, len(batches)),
        "images_per_s": seen / max(secs, 1e-9),
        "epoch_seconds": secs,
    }


def provenance(argv: list[str] | None) -> dict[str, object]:
    """What a card needs to be re-made: the git commit, whether the tree had local changes, and
    the exact command line."""
    import shlex
    import subprocess

    def git(*args: str) -> str | None:
        try:
            out = subprocess.run(
                ["git", *args],
                capture_output=True,
                text=True,
                timeout=10,
                check=True,
                cwd=Path(__file__).parents[1],  # the code's repository, wherever the run starts
            )
        except (OSError, subprocess.SubprocessError):
            return None
        return out.stdout.strip()

    commit = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no")
    args = sys.argv[1:] if argv is None else argv
    return {
        "git_commit": commit,
        "git_clean": None if status is None else status == "",
        "command": shlex.join(["python", "-m", "training.train", *args]),
    }


MIN_BATCH = 32  # below this BatchNorm statistics and in-batch pairs get too noisy


def adapt_batch_size(cfg: TrainConfig, n_train: int, world: int) -> int:
    """The batch size to train with: cfg.batch_size, shrunk (not below MIN_BATCH) so that an
    epoch has at least cfg.min_steps_per_epoch steps. 256 images a step on 540 images is 2 steps
    an epoch: 8 steps in a 4-epoch run, which collapses rather than learns."""
    batch = cfg.batch_size
    if cfg.min_steps_per_epoch > 0 and n_train // (batch * world) < cfg.min_steps_per_epoch:
        batch = max(MIN_BATCH, n_train // (cfg.min_steps_per_epoch * world))
        if cfg.m_per_class:  # MPerClassSampler needs a multiple of m
            batch = max(cfg.m_per_class, batch - batch % cfg.m_per_class)
        batch = min(batch, cfg.batch_size)
    if n_train // (batch * world) == 0:
        raise TrainingRefused(
            f"{n_train} training images is less than one batch of {batch * world}: "
            f"add images or pass a smaller --batch-size"
        )
    return batch


class TrainingRefused(RuntimeError):
    """The run cannot give a usable model; the message says why and which flag changes that."""


def collapse_reason(val: dict[str, float], val_d: np.ndarray, min_auc: float) -> str | None:
    """Why the validation pairs say the tower is collapsed, or None. A collapsed tower maps every
    image to (nearly) one point: different-class pairs then sit as close as same-class ones (AUC
    near 0.5) or all distances shrink towards 0 (the threshold with them)."""
    if val["roc_auc"] < min_auc:
        return (
            f"validation ROC AUC {val['roc_auc']:.3f} is below --min-val-auc {min_auc} "
            f"(0.5 is chance): the tower does not tell the classes apart"
        )
    spread = float(np.median(val_d))
    if spread < 1e-3:
        return (
            f"the median validation pair distance is {spread:.2g}: every image embeds to nearly "
            f"the same point"
        )
    return None


def weights_digest(module: nn.Module) -> str:
    """sha256 of the trainable parameters (BatchNorm running stats are per rank by design: DDP
    broadcasts rank 0's at each forward, and rank 0 exports)."""
    h = hashlib.sha256()
    for k, v in sorted(module.named_parameters()):
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def train(cfg: TrainConfig, argv: list[str] | None = None) -> dict:
    made = provenance(argv)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    device = pick_device(cfg.device)
    if world > 1:
        if device.type == "cuda":
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    # torch's own default is the cores it sees, blind to a container's CPU quota (--cpus 1 on a
    # 16-core host would start 16 threads and be throttled); usable_cores honours the quota.
    torch.set_num_threads(cfg.threads or max(1, usable_cores() // world))
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)

    bundle: DataBundle = load_dataset(
        cfg.dataset,
        cfg.data_dir,
        val_fraction=cfg.val_fraction,
        seed=cfg.seed,
        channels=cfg.channels,
        image_size=cfg.image_size or None,
        exclude_classes=cfg.exclude_classes,
        download=cfg.download,
        val_class_fraction=cfg.val_class_fraction
        if cfg.resolved_val_split(num_classes_of(cfg)) == "classes"
        else 0.0,
    )
    train_split = bundle.train
    if cfg.max_train_images and len(train_split) > cfg.max_train_images:
        keep = torch.randperm(len(train_split), generator=torch.Generator().manual_seed(cfg.seed))
        train_split = train_split.subset(keep[: cfg.max_train_images].sort().values)
    c, h, w = bundle.shape
    mean, std = channel_stats(cfg.dataset, train_split.images)
    model, opt = build_model(cfg, (c, h, w), len(bundle.classes), mean, std)
    model = model.to(device)
    tower = model.tower
    batch = adapt_batch_size(cfg, len(train_split), world)
    if batch != cfg.batch_size:
        log.warning(
            "batch size %d -> %d: %d training images would make epochs of %d steps "
            "(--min-steps-per-epoch %d); the card records %d",
            cfg.batch_size,
            batch,
            len(train_split),
            len(train_split) // (cfg.batch_size * world),
            cfg.min_steps_per_epoch,
            batch,
        )
        cfg.batch_size = batch  # the card must record the batch the weights were trained with
    steps_per_epoch = len(epoch_batches(train_split.labels, cfg, 0, rank, world))
    if hasattr(tower.backbone, "init_whitening"):
        tower.backbone.init_whitening(tower.standardize(train_split.images[:5000]))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambdas(cfg, steps_per_epoch))
    lookahead = Lookahead(model, steps_per_epoch * cfg.epochs) if cfg.lookahead else None

    ckpt_path = cfg.run_dir / "checkpoint.pt"
    history: list[dict] = []
    start_epoch = 0
    if cfg.resume and ckpt_path.is_file():
        ckpt = torch.load(ckpt_path, map_location=device, weights_only=False)
        model.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["optimizer"])
        sched.load_state_dict(ckpt["scheduler"])
        start_epoch, history = ckpt["epoch"], ckpt["history"]
        if lookahead is not None:
            lookahead.slow = ckpt["lookahead"]
        log.info("resumed from %s at epoch %d", ckpt_path, start_epoch)
    train_model: nn.Module = model
    if world > 1:
        train_model = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )

    if rank == 0:
        log.info(
            "%s: %d train / %d val / %d test images %s, %d classes, %d steps/epoch, "
            "device %s, world %d",
            cfg.dataset,
            len(train_split),
            len(bundle.val),
            len(bundle.test),
            bundle.shape,
            len(bundle.classes),
            steps_per_epoch,
            device,
            world,
        )
    t_start = time.perf_counter() - sum(e.get("epoch_seconds", 0) for e in history)
    cpu_start = time.process_time()  # all threads of this process; the box may be shared
    for epoch in range(start_epoch, cfg.epochs):
        stats = train_one_epoch(
            train_model, opt, sched, train_split, cfg, epoch, device, rank, world, lookahead
        )
        if lookahead is not None and epoch + 1 == cfg.epochs:
            lookahead.finish()  # the exported weights are the slow average
        if rank == 0 and ((epoch + 1) % cfg.eval_every == 0 or epoch + 1 == cfg.epochs):
            stats |= validate(tower, bundle.val, device)
        stats["epoch"] = epoch + 1
        history.append(stats)
        if rank == 0:
            log.info(
                "epoch %d/%d  %s",
                epoch + 1,
                cfg.epochs,
                "  ".join(f"{k} {v:.4g}" for k, v in stats.items() if k != "epoch"),
            )
            ckpt_path.parent.mkdir(parents=True, exist_ok=True)
            tmp = ckpt_path.with_suffix(".tmp")
            torch.save(
                {
                    "model": model.state_dict(),
                    "optimizer": opt.state_dict(),
                    "scheduler": sched.state_dict(),
                    "epoch": epoch + 1,
                    "history": history,
                    "lookahead": lookahead.slow if lookahead is not None else None,
                    "config": cfg.to_json(),
                },
                tmp,
            )
            tmp.replace(ckpt_path)  # atomic: a crash mid-save never leaves a broken checkpoint
    train_seconds = time.perf_counter() - t_start
    cpu_seconds = time.process_time() - cpu_start

    if world > 1:
        (cfg.run_dir / f"weights-rank{rank}.sha256").parent.mkdir(parents=True, exist_ok=True)
        (cfg.run_dir / f"weights-rank{rank}.sha256").write_text(weights_digest(model) + "\n")
        dist.barrier()
    result: dict = {"history": history}
    if rank == 0:
        exported = readout_tower(tower, model.loss, cfg.readout, cfg.readout_temperature)
        result = export(
            exported.cpu().eval(), bundle, cfg, history, train_seconds, cpu_seconds, made
        )
    if world > 1:
        dist.barrier()
        dist.destroy_process_group()
    return result


def export(
    tower: Tower,
    bundle: DataBundle,
    cfg: TrainConfig,
    history: list[dict],
    train_seconds: float,
    cpu_seconds: float | None = None,
    made: dict | None = None,
) -> dict:
    """Calibrate on validation pairs, refuse a collapsed tower, measure on test pairs in every
    precision the service may run, write the artifact and plots."""
    val_emb = embed_all(tower, bundle.val.images)
    a, b, same = balanced_pairs(bundle.val.labels, seed=0)
    val_d = pair_distances(val_emb, a, b)
    threshold, calibration = calibrate(val_d, same.numpy())
    val_metrics = verification_metrics(val_d, same.numpy(), threshold)
    reason = collapse_reason(val_metrics, val_d, cfg.min_val_auc)
    if reason and not cfg.force:
        raise TrainingRefused(
            f"not exporting to {cfg.out}: {reason} (threshold {threshold:.4g}). Train longer or "
            f"on more images per class, or pass --force to export it anyway"
        )
    test_emb = embed_all(tower, bundle.test.images)
    from training.evaluate import PAIR_SEED

    metrics = compute_metrics(
        test_emb, bundle.test.labels, threshold, bundle.classes, cfg.exclude_classes
    )
    metrics["val"] = val_metrics
    metrics["val_split"] = (
        {"kind": "classes", "classes": bundle.val_classes}
        if bundle.val_classes
        else {"kind": "images", "fraction": cfg.val_fraction}
    )
    if reason:
        metrics["forced_export"] = reason
    metrics["train_seconds"] = round(train_seconds, 1)
    if cpu_seconds is not None:
        metrics["train_cpu_seconds"] = round(cpu_seconds, 1)
    metrics["train_images_per_s"] = (
        round(float(np.mean([e["images_per_s"] for e in history])), 1) if history else None
    )
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    metrics["machine"] = (
        f"{os.cpu_count()} CPU cores, torch {torch.__version__}, load average {load:.1f} at export"
    )
    c, h, w = bundle.shape
    training = cfg.to_json() | {"provenance": made or provenance(None)}
    card = artifact.write(
        cfg.out,
        tower,
        name=cfg.name,
        dataset=cfg.dataset,
        classes=bundle.classes,
        input_spec=artifact.InputSpec(channels=c, height=h, width=w),
        embedding_dim=val_emb.shape[1],
        threshold=threshold,
        calibration=calibration,
        metrics=metrics,
        training=training,
        embedding_stats=embedding_stats(val_emb),  # the drift monitor's reference (app/drift.py)
    )
    # The service may run the exported module in bfloat16 (app/precision.py): measure the saved
    # TorchScript file in both, so the card says what users get in either.
    saved = artifact.load_module(cfg.out / artifact.MODEL_FILE)
    by_precision = {}
    for precision in ("float32", "bfloat16"):
        emb = embed_all(saved, bundle.test.images, precision=precision)
        t = subset_metrics(emb, bundle.test.labels, threshold)
        by_precision[precision] = {
            "pair_accuracy": t["accuracy"],
            "roc_auc": t["roc_auc"],
            "eer": t["eer"],
        }
    card.metrics["by_precision"] = by_precision
    tmp = cfg.out / (artifact.CARD_FILE + ".tmp")
    tmp.write_text(card.model_dump_json(indent=2) + "\n")
    tmp.replace(cfg.out / artifact.CARD_FILE)
    (cfg.run_dir / "history.json").parent.mkdir(parents=True, exist_ok=True)
    (cfg.run_dir / "history.json").write_text(json.dumps(history, indent=2))
    if cfg.plots:
        from training import plots

        plots.training_curves(cfg.out, history)
        plots.evaluation_plots(cfg.out, test_emb, bundle.test, threshold, bundle.classes, PAIR_SEED)
    t = metrics["test"]
    log.info(
        "exported %s (%s): test pair accuracy %.4f  AUC %.5f  EER %.4f  threshold %.4f  "
        "bfloat16 accuracy %.4f  in %.0f s (%.0f s CPU)",
        cfg.out,
        card.version,
        t["accuracy"],
        t["roc_auc"],
        t["eer"],
        threshold,
        by_precision["bfloat16"]["pair_accuracy"],
        train_seconds,
        cpu_seconds or float("nan"),
    )
    return {"card": card.model_dump(), "history": history}


def num_classes_of(cfg: TrainConfig) -> int:
    """Classes of the data set, without loading it (for the auto validation split)."""
    if cfg.dataset.startswith("folder:"):
        from training.data import list_class_folders

        root = Path(cfg.dataset.removeprefix("folder:"))
        root = root / "train" if (root / "train").is_dir() else root
        try:
            return len(list_class_folders(root)[0])
        except DataError:
            return 0  # load_dataset reports the real problem
    return 10


def check_out(cfg: TrainConfig) -> None:
    """Never replace a model silently: a forgotten --out used to overwrite the shipped mnist."""
    if (cfg.out / artifact.CARD_FILE).exists() and not cfg.overwrite and not cfg.resume:
        raise TrainingRefused(
            f"{cfg.out} already holds a model ({artifact.CARD_FILE}); pass --out to another "
            f"folder, or --overwrite to replace it"
        )


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    cfg = parse_args(argv, description=__doc__.split("\n")[0])
    try:
        check_out(cfg)
        train(cfg, argv)
    except DataError as e:
        log.error("%s", e)
        return 2
    except TrainingRefused as e:
        log.error("%s", e)
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
