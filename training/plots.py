"""Plots written beside an exported model (the README shows them):

roc.png (ROC, log FAR axis), distances.png (same/different histograms with the threshold),
pairs.png (example test pairs with distances and verdicts), embeddings.png (2-D projection of test
embeddings by class), training.png (loss and validation curves).
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: no display on training machines or CI
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from sklearn.metrics import roc_curve  # noqa: E402

from training.calibrate import balanced_pairs, pair_distances  # noqa: E402
from training.data import Split  # noqa: E402

DPI = 90  # keeps each PNG small enough to commit beside the model


def training_curves(out: Path, history: list[dict]) -> None:
    if not history:
        return
    epochs = [h["epoch"] for h in history]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.2))
    ax1.plot(epochs, [h["loss"] for h in history], marker="o")
    ax1.set(xlabel="epoch", ylabel="training loss", title="loss")
    val = [(h["epoch"], h["val_auc"], h["val_acc"]) for h in history if "val_auc" in h]
    if val:
        e, auc, acc = zip(*val, strict=True)
        ax2.plot(e, auc, marker="o", label="val AUC")
        ax2.plot(e, acc, marker="s", label="val pair accuracy")
        ax2.legend()
    ax2.set(xlabel="epoch", title="validation")
    fig.tight_layout()
    fig.savefig(Path(out) / "training.png", dpi=DPI)
    plt.close(fig)


def _image(x: torch.Tensor) -> np.ndarray:
    img = x.permute(1, 2, 0).numpy()  # (H, W, C)
    return img[:, :, 0] if img.shape[2] == 1 else img


def evaluation_plots(
    out: Path, emb: torch.Tensor, test: Split, threshold: float, classes: list[str], seed: int
) -> None:
    out = Path(out)
    a, b, same_t = balanced_pairs(test.labels, seed=seed)
    d = pair_distances(emb, a, b)
    same = same_t.numpy()

    fpr, tpr, _ = roc_curve(same, -d)
    fig, ax = plt.subplots(figsize=(4.5, 4))
    ax.plot(np.maximum(fpr, 1e-5), tpr)
    ax.set(
        xscale="log",
        xlabel="false accept rate",
        ylabel="true accept rate",
        title="ROC (test pairs)",
    )
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / "roc.png", dpi=DPI)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 3.5))
    bins = np.linspace(0, float(d.max()) * 1.02 + 1e-9, 80)
    ax.hist(d[same], bins=bins, alpha=0.6, label="same class")
    ax.hist(d[~same], bins=bins, alpha=0.6, label="different class")
    ax.axvline(threshold, color="k", linestyle="--", label=f"threshold {threshold:.3f}")
    ax.set(xlabel="distance", ylabel="pairs", yscale="log", title="test pair distances")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "distances.png", dpi=DPI)
    plt.close(fig)

    # Example pairs as the classic Siamese write-ups show them: 6 same, 6 different, with any
    # mistakes among the first shown so the failure modes are visible too.
    rng = np.random.default_rng(seed)
    wrong = np.flatnonzero((d <= threshold) != same)
    picks = list(rng.permutation(wrong)[:4])
    for want in (True, False):
        pool = np.flatnonzero(same == want)
        picks += list(rng.choice(pool, size=min(6, len(pool)), replace=False))
    picks = picks[:12]
    fig, axes = plt.subplots(3, 4, figsize=(8, 6.4))
    for ax, k in zip(axes.flat, picks, strict=False):
        pair = torch.cat([test.images[a[k]], test.images[b[k]]], dim=-1)
        ax.imshow(_image(pair), cmap="gray" if pair.shape[0] == 1 else None)
        verdict = "same" if d[k] <= threshold else "different"
        ok = verdict == ("same" if same[k] else "different")
        ax.set_title(f"d={d[k]:.3f} {verdict}", color="green" if ok else "red", fontsize=9)
        ax.set_xlabel(
            f"{classes[int(test.labels[a[k]])]} / {classes[int(test.labels[b[k]])]}", fontsize=8
        )
        ax.set_xticks([])
        ax.set_yticks([])
    for ax in axes.flat[len(picks) :]:
        ax.axis("off")
    fig.suptitle("test pairs (red: wrong verdict)")
    fig.tight_layout()
    fig.savefig(out / "pairs.png", dpi=DPI)
    plt.close(fig)

    idx = torch.randperm(len(emb), generator=torch.Generator().manual_seed(seed))[:2000]
    x, y = emb[idx].numpy(), test.labels[idx].numpy()
    if x.shape[1] == 2:
        xy, how = x, "raw 2-D embedding"
    else:
        from sklearn.manifold import TSNE

        xy = TSNE(n_components=2, init="pca", random_state=seed, perplexity=30).fit_transform(x)
        how = "t-SNE"
    fig, ax = plt.subplots(figsize=(6, 5))
    sc = ax.scatter(xy[:, 0], xy[:, 1], c=y, cmap="tab10", s=4)
    handles = [
        plt.Line2D([], [], marker="o", ls="", color=sc.cmap(sc.norm(i)))
        for i in range(len(classes))
    ]
    ax.legend(handles, classes, fontsize=7, loc="best", markerscale=1)
    ax.set(title=f"test embeddings ({how}, {len(idx)} images)", xticks=[], yticks=[])
    fig.tight_layout()
    fig.savefig(out / "embeddings.png", dpi=DPI)
    plt.close(fig)
