"""Few-shot identification through a gallery: enroll k images per class, identify the test set.

    python -m benchmarks.fewshot model_store/mnist --dataset mnist --data-dir ../shared/data
    python -m benchmarks.fewshot runs/unseen/model --dataset mnist --classes 5,6,7,8,9

The Siamese promise: a new identity needs a few reference images, not retraining. For each k in
--shots and each of --draws random draws, every class in --classes is enrolled as a subject with
k training images (a SQLite gallery, searched by app.galleries exactly as the service does), then:

* top-1: the share of those classes' test images whose nearest subject is their own class;
* open set: the first half of --classes is enrolled alone, and the test images of the other
  half are identified at the model's calibrated threshold: rejected = no match (the answer the
  service gives for an unknown face); known accepted = test images of the enrolled half matched
  to their own class within the threshold.

Mean (and min-max over draws) of each, as a Markdown table for docs/galleries.md.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

import numpy as np
import torch

from app import artifact
from app.galleries.search import GallerySearch
from app.galleries.sqlite import SqliteStore
from app.galleries.store import Binding
from benchmarks.report import table
from training.data import load_dataset


def embed(module: torch.nn.Module, images: torch.Tensor, batch: int = 512) -> np.ndarray:
    with torch.inference_mode():
        parts = [module(images[i : i + batch]) for i in range(0, len(images), batch)]
    return torch.cat(parts).float().numpy()  # (N, D)


def gallery_run(
    store_dir: Path,
    name: str,
    binding: Binding,
    shots: dict[int, np.ndarray],
    queries: np.ndarray,
    threshold: float,
) -> list[tuple[int | None, float]]:
    """Enroll each class's shots, identify every query: (matched class or None, distance)."""
    store = SqliteStore(store_dir / f"{name}.db")
    for label, embs in shots.items():
        store.enroll(name, f"c{label}", binding, embs, None)
    search = GallerySearch(store, ann_min_images=10**9)
    state = search.state(name)
    out: list[tuple[int | None, float]] = []
    for q in queries:
        (best,), _ = search.identify(state, q, 1)
        out.append((int(best.subject[1:]) if best.distance <= threshold else None, best.distance))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model_dir", type=Path)
    parser.add_argument("--dataset", default="mnist")
    parser.add_argument("--data-dir", type=Path, default=Path("../shared/data"))
    parser.add_argument("--classes", default="", help="comma-separated; default: all")
    parser.add_argument("--shots", default="1,5")
    parser.add_argument("--draws", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    loaded = artifact.load(args.model_dir)
    card = loaded.card
    torch.set_num_threads(1)
    data = load_dataset(args.dataset, args.data_dir, channels=card.input.channels)
    names = data.classes
    classes = (
        [names.index(c) for c in args.classes.split(",")]
        if args.classes
        else list(range(len(names)))
    )
    known, unknown = classes[: len(classes) // 2], classes[len(classes) // 2 :]
    binding = Binding(card.name, card.version, card.embedding_dim)

    test_mask = torch.isin(data.test.labels, torch.tensor(classes))
    test_labels = data.test.labels[test_mask].numpy()
    test_embs = embed(loaded.module, data.test.images[test_mask])
    print(f"{card.name}: {len(test_labels)} test images of classes {[names[c] for c in classes]}")

    rng = np.random.default_rng(args.seed)
    train_labels = data.train.labels.numpy()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for k in [int(s) for s in args.shots.split(",")]:
            top1, rejected, accepted = [], [], []
            for draw in range(args.draws):
                picked = {
                    c: rng.choice(np.flatnonzero(train_labels == c), k, replace=False)
                    for c in classes
                }
                shot_embs = {
                    c: embed(loaded.module, data.train.images[torch.as_tensor(i)])
                    for c, i in picked.items()
                }
                closed = gallery_run(
                    Path(tmp), f"k{k}-d{draw}-all", binding, shot_embs, test_embs, float("inf")
                )
                top1.append(
                    np.mean([m == y for (m, _), y in zip(closed, test_labels, strict=True)])
                )
                half = gallery_run(
                    Path(tmp),
                    f"k{k}-d{draw}-half",
                    binding,
                    {c: shot_embs[c] for c in known},
                    test_embs,
                    card.threshold,
                )
                is_known = np.isin(test_labels, known)
                rejected.append(
                    np.mean(
                        [m is None for (m, _), kn in zip(half, is_known, strict=True) if not kn]
                    )
                )
                accepted.append(
                    np.mean(
                        [
                            m == y
                            for (m, _), y, kn in zip(half, test_labels, is_known, strict=True)
                            if kn
                        ]
                    )
                )
            rows.append(
                [
                    card.name,
                    ",".join(names[c] for c in classes),
                    k,
                    _pm(top1),
                    _pm(rejected),
                    _pm(accepted),
                ]
            )
            print(rows[-1])
    print(
        table(
            [
                "model",
                "classes",
                "k",
                "top-1",
                "open set: unknown rejected",
                "open set: known accepted",
            ],
            rows,
        )  # fmt: skip
    )
    print(f"threshold {card.threshold:.4g} (the model's); {args.draws} draws; known = "
          f"{[names[c] for c in known]}, unknown = {[names[c] for c in unknown]}")  # fmt: skip
    return 0


def _pm(values: list[float]) -> str:
    return (
        f"{100 * statistics.fmean(values):.1f}% ({100 * min(values):.1f}-{100 * max(values):.1f})"
    )


if __name__ == "__main__":
    raise SystemExit(main())
