"""The trainer on committed fixture images: losses learn, export round-trips, evaluate runs."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from app import artifact
from training.config import PRESETS, RUN_FIELDS, TrainConfig, parse_args
from training.data import DataError, augment, load_dataset, load_test_split
from training.losses import LOSSES, LossSpec, build_loss
from training.nets import build_tower
from training.reference_stats import add_reference_stats
from training.train import TrainModel, adapt_batch_size, main

FIXTURES = Path(__file__).parent / "fixtures"
MNIST_SMALL = FIXTURES / "mnist_small"
ROOT = Path(__file__).parents[1]


@pytest.fixture(scope="module")
def small_mnist():
    return load_dataset(
        f"folder:{MNIST_SMALL}", Path("."), channels=1, image_size=28, cache_dir=None, seed=0
    )


def test_folder_dataset_split_is_stratified_and_disjoint(small_mnist):
    b = small_mnist
    assert b.classes == [str(i) for i in range(10)]
    assert b.shape == (1, 28, 28) and b.train.images.dtype == torch.uint8
    assert len(b.train) + len(b.val) + len(b.test) == 300
    for split in (b.train, b.val, b.test):
        assert set(split.labels.tolist()) == set(range(10))  # every class in every split


def test_missing_data_is_a_clear_error(tmp_path):
    with pytest.raises(DataError, match="class sub-folders"):
        load_dataset(f"folder:{tmp_path}", tmp_path, cache_dir=None)
    with pytest.raises(DataError, match="choose one of"):
        load_dataset("imagenet", tmp_path)
    with pytest.raises(DataError, match="MNIST not found"):
        load_dataset("mnist", tmp_path, download=False)


def test_train_cli_exits_2_with_message_when_data_missing(tmp_path, caplog):
    assert (
        main(
            [
                "--dataset",
                "mnist",
                "--data-dir",
                str(tmp_path),
                "--download",
                "false",
                "--out",
                str(tmp_path / "m"),
            ]
        )
        == 2
    )
    assert "MNIST not found" in caplog.text


def test_exclude_classes_removes_them_from_train_and_val_only(small_mnist):
    b = load_dataset(
        f"folder:{MNIST_SMALL}", Path("."), channels=1, cache_dir=None, exclude_classes=["5", "7"]
    )
    assert not torch.isin(b.train.labels, torch.tensor([5, 7])).any()
    assert not torch.isin(b.val.labels, torch.tensor([5, 7])).any()
    assert torch.isin(b.test.labels, torch.tensor([5, 7])).any()


def test_the_test_split_alone_is_the_one_load_dataset_gives(tmp_path):
    """Evaluation loads only test/ of a folder with train/ and test/ (not the training images):
    the same classes, images and labels as the whole load; a folder without them has none."""
    root = tmp_path / "digits"
    for part, files in (("train", slice(0, 20)), ("test", slice(20, 30))):
        for digit in ("3", "7", "9"):
            (root / part / digit).mkdir(parents=True)
            for f in sorted((FIXTURES / "mnist_small" / digit).glob("*.png"))[files]:
                shutil.copy(f, root / part / digit / f.name)
    whole = load_dataset(f"folder:{root}", tmp_path, channels=1, image_size=28, cache_dir=None)
    alone = load_test_split(f"folder:{root}", tmp_path, channels=1, image_size=28, cache_dir=None)
    assert alone is not None
    classes, test = alone
    assert classes == whole.classes and len(test) == 30
    assert torch.equal(test.images, whole.test.images)
    assert torch.equal(test.labels, whole.test.labels)
    flat = f"folder:{FIXTURES / 'mnist_small'}"
    assert load_test_split(flat, tmp_path, channels=1, image_size=28, cache_dir=None) is None


def test_augment_shifts_and_flips_without_changing_content_amount():
    x = torch.zeros(64, 1, 8, 8, dtype=torch.uint8)
    x[:, :, 3:5, 3:5] = 255
    g = torch.Generator().manual_seed(0)
    y = augment(x, translate=2, flip=True, generator=g)
    assert y.shape == x.shape and y.dtype == torch.uint8
    assert (
        y.sum(dim=(1, 2, 3)) == x.sum(dim=(1, 2, 3))
    ).all()  # a 2x2 blob shifted by <=2 stays inside
    assert (y != x).any(dim=(1, 2, 3)).sum() > 32  # most images moved


@pytest.mark.parametrize("loss_name", LOSSES)
def test_every_loss_lowers_its_loss_in_a_few_steps(loss_name, small_mnist):
    torch.manual_seed(0)
    normalize = True
    tower = build_tower(
        "convnet",
        channels=1,
        height=28,
        width=28,
        embedding_dim=16,
        widths=[8, 16],
        mean=[0.13],
        std=[0.3],
        normalize=normalize,
        flip_tta=False,
    )
    margin = {
        "contrastive": 1.0,
        "triplet-batch-hard": 0.2,
        "triplet-semi-hard": 0.2,
        "arcface": 20.0,
    }.get(loss_name, 0.3)
    loss = build_loss(
        LossSpec(loss_name, margin, 16.0, 0.1, normalize), num_classes=10, embedding_dim=16
    )
    model = TrainModel(tower, loss)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    x, y = small_mnist.train.images[:120], small_mnist.train.labels[:120]
    model.train()
    first = model(x, y).item()
    for _ in range(25):
        value = model(x, y)
        opt.zero_grad()
        value.backward()
        opt.step()
    assert model(x, y).item() < first * 0.9, f"{loss_name}: {first} -> {value.item()}"


def test_presets_and_flags(tmp_path):
    cfg = parse_args(["--preset", "seed-mnist", "--epochs", "2", "--out", str(tmp_path / "x")])
    assert (
        cfg.arch == "seed"
        and cfg.embedding_dim == 2
        and cfg.loss == "contrastive"
        and cfg.margin == 5.0
    )
    assert cfg.epochs == 2  # the flag wins over the preset
    assert cfg.name == "x"
    cfg = parse_args(["--dataset", "cifar10"])
    assert cfg.widths == PRESETS["cifar10"]["widths"] and cfg.flip_tta is True
    with pytest.raises(SystemExit):
        parse_args(["--loss", "nonsense"])


def _small_args(tmp_path: Path, out: Path, *extra: str) -> list[str]:
    """A tiny real run on the committed fixture digits: 8/16-wide net, 16-d embedding."""
    return [
        *("--dataset", f"folder:{MNIST_SMALL}", "--channels", "1", "--image-size", "28"),
        *("--out", str(out), "--run-dir", str(tmp_path / "run")),
        *("--widths", "8", "16", "--embedding-dim", "16", "--batch-size", "64", "--epochs", "3"),
        *("--lr", "0.05", "--plots", "false", "--threads", "1"),
        # 3 epochs on 230 digits: too little for the collapse guard and the small-data batch
        # rule, which have tests of their own; these tests are about the export itself.
        *("--force", "--min-steps-per-epoch", "0"),
        *extra,
    ]


def _train_small(tmp_path: Path, *extra: str, out_name: str = "model") -> Path:
    out = tmp_path / out_name
    assert main(_small_args(tmp_path, out, *extra)) == 0
    return out


@pytest.mark.slow
def test_short_training_run_exports_a_model_the_service_loads(tmp_path):
    out = _train_small(tmp_path, "--plots", "true")
    art = artifact.load(out)
    card = art.card
    assert card.input.channels == 1 and card.embedding_dim == 16 and card.threshold > 0
    assert card.training["epochs"] == 3 and card.training["dataset"].startswith("folder:")
    assert {"roc_auc", "eer", "accuracy", "tar_at_far_1e-3", "precision_at_1", "map_at_r"} <= set(
        card.metrics["test"]
    )
    assert card.metrics["test"]["roc_auc"] > 0.6  # 3 epochs on 200 images: well above chance
    # The drift reference: the validation embeddings' statistics, as re-export computes them.
    stats = card.embedding_stats
    assert stats is not None and len(stats.covariance) == 16
    again = add_reference_stats(shutil.copytree(out, tmp_path / "again"), Path("."))
    assert again.images == stats.images > 2
    np.testing.assert_allclose(again.mean, stats.mean, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(again.covariance, stats.covariance, rtol=1e-5, atol=1e-7)
    for png in ("roc.png", "distances.png", "pairs.png", "embeddings.png", "training.png"):
        assert (out / png).stat().st_size > 1000
    ckpt = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=False)
    assert ckpt["epoch"] == 3 and "optimizer" in ckpt and "scheduler" in ckpt

    # the service loads the freshly trained model and answers with it
    from fastapi.testclient import TestClient

    from app.config import Settings
    from app.main import create_app

    sevens = sorted((MNIST_SMALL / "7").glob("*.png"))
    two = sorted((MNIST_SMALL / "2").glob("*.png"))[0]
    with TestClient(create_app(Settings(model_store=tmp_path, api_keys=""))) as client:
        files = {"image_a": sevens[0].read_bytes(), "image_b": two.read_bytes()}
        r = client.post("/verify", files=files, data={"model": "model"})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["model_version"] == card.version and body["threshold"] == card.threshold
        assert 0 <= body["similarity"] <= 1 and body["distance"] > 0

    # --resume from the epoch-3 checkpoint with more epochs continues rather than restarting
    out2 = _train_small(tmp_path, "--epochs", "4", "--resume", out_name="model2")
    hist = json.loads((tmp_path / "run" / "history.json").read_text())
    assert [h["epoch"] for h in hist] == [1, 2, 3, 4]
    card2 = artifact.load(out2).card
    assert card2.training["resume"] is True and card2.training["epochs"] == 4
    assert card2.version != card.version  # a 4th epoch changed the weights


@pytest.mark.slow
def test_evaluate_cli_reports_seen_and_unseen(tmp_path, capsys):
    out = _train_small(tmp_path, "--exclude-classes", "8", "9")
    from training.evaluate import main as evaluate_main

    assert evaluate_main([str(out), "--json", str(tmp_path / "m.json")]) == 0
    got = json.loads((tmp_path / "m.json").read_text())
    assert got["model_version"] == artifact.read_card(out).version
    assert {"test", "test_seen", "test_unseen"} <= set(got)
    assert got["test_unseen"]["pairs"] < got["test"]["pairs"]


@pytest.mark.slow
def test_ddp_two_cpu_ranks_agree_on_weights(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with socket.socket() as sock:  # torchrun's static rendezvous needs a real port, not 0
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    cmd = [
        *(sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2"),
        *("--master-port", str(port), "-m", "training.train"),
        *_small_args(tmp_path, tmp_path / "model", "--batch-size", "32", "--epochs", "1"),
    ]
    subprocess.run(cmd, cwd=ROOT, env=env, check=True, timeout=240, capture_output=True)
    digests = [(tmp_path / "run" / f"weights-rank{r}.sha256").read_text() for r in (0, 1)]
    assert digests[0] == digests[1]
    assert artifact.load(tmp_path / "model").card.training["batch_size"] == 32


def test_flip_tta_makes_the_exported_embedding_mirror_invariant():
    torch.manual_seed(0)
    kw = dict(channels=3, height=16, width=16, embedding_dim=8, widths=[8], mean=[0.5] * 3)
    x = torch.randint(0, 256, (4, 3, 16, 16), dtype=torch.uint8)
    for shift in (0, 1):
        tower = build_tower(
            "convnet", **kw, std=[0.25] * 3, normalize=True, flip_tta=True, shift_tta=shift
        )
        tower.eval()
        torch.testing.assert_close(tower(x), tower(x.flip(-1)), rtol=1e-4, atol=1e-5)
    plain = build_tower("convnet", **kw, std=[0.25] * 3, normalize=True, flip_tta=False).eval()
    assert not torch.allclose(plain(x), plain(x.flip(-1)), atol=1e-3)


def test_whitening_stem_decorrelates_image_patches():
    from training.nets import WhitenedConvGroups

    g = torch.Generator().manual_seed(0)
    # Smooth images (neighbouring pixels strongly correlated, as in photos) plus a little noise.
    coarse = torch.rand(200, 3, 5, 5, generator=g)
    x = torch.nn.functional.interpolate(coarse, size=16, mode="bilinear")
    x = (x + 0.2 * torch.rand(200, 3, 16, 16, generator=g) - 0.6) / 0.3
    net = WhitenedConvGroups(3, [8])
    net.init_whitening(x)
    out = torch.nn.functional.conv2d(x, net.whiten.weight)[:, :12]  # (N, 12, 15, 15), no bias
    flat = out.permute(0, 2, 3, 1).reshape(-1, 12).double()
    cov = flat.T @ flat / len(flat)
    torch.testing.assert_close(cov, torch.eye(12, dtype=torch.double), atol=0.03, rtol=0)
    raw = torch.nn.functional.unfold(x, 2).transpose(1, 2).reshape(-1, 12).double()
    assert (raw.T @ raw / len(raw) - torch.eye(12, dtype=torch.double)).abs().max() > 0.5
    assert not net.whiten.weight.requires_grad  # frozen: only its bias ever learns


def test_whitening_bias_schedule_stops_after_its_epochs():
    from training.train import lr_lambdas

    cfg = parse_args(["--preset", "cifar10", "--epochs", "10", "--whiten-bias-epochs", "3"])
    weights, shifts, whiten_bias = lr_lambdas(cfg, steps_per_epoch=40)
    assert whiten_bias(3 * 40 - 1) == weights(3 * 40 - 1) > 0
    assert whiten_bias(3 * 40) == 0 and weights(3 * 40) > 0 and shifts(3 * 40) > 0


def test_reflect_padding_shifts_in_the_mirrored_border_not_zeros():
    x = torch.randint(1, 256, (64, 3, 8, 8), dtype=torch.uint8)  # no zero pixel anywhere
    g = torch.Generator().manual_seed(0)
    assert (augment(x, translate=2, flip=False, generator=g) == 0).any()  # zero fill
    g = torch.Generator().manual_seed(0)
    y = augment(x, translate=2, flip=False, generator=g, pad="reflect")
    assert not (y == 0).any() and (y != x).any(dim=(1, 2, 3)).sum() > 32


def test_random_erasing_zeroes_one_rectangle_in_the_chosen_share_of_images():
    x = torch.randint(1, 256, (2000, 1, 28, 28), dtype=torch.uint8)  # no zero pixel anywhere
    g = torch.Generator().manual_seed(0)
    y = augment(x, translate=0, flip=False, generator=g, erase=0.5)
    zero = y == 0
    erased = zero.any(dim=(1, 2, 3))
    assert 0.45 < erased.float().mean() < 0.55
    assert (y[~zero] == x[~zero]).all()  # nothing else changes
    for img in zero[erased][:200, 0]:  # the zeros of each image form one filled rectangle
        rows, cols = img.any(1).nonzero().flatten(), img.any(0).nonzero().flatten()
        box = img[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
        assert box.all() and box.sum() == img.sum()
    share = zero[erased].float().mean(dim=(1, 2, 3))
    assert share.min() >= 0.01 and share.max() <= 0.45


@pytest.mark.slow
def test_airbench_recipe_trains_and_exports_the_lookahead_weights(tmp_path, capsys):
    out = _train_small(
        tmp_path,
        *("--arch", "airbench", "--embedding-dim", "16", "--loss", "softmax", "--scale", "0.11"),
        *("--label-smoothing", "0.2", "--lr", "1.5", "--momentum", "0.85", "--lookahead"),
        *("--bias-lr-scale", "64", "--weight-decay", "0.0013", "--whiten-bias-epochs", "1"),
        *("--pad", "reflect", "--flip", "--flip-tta"),
    )
    card = artifact.load(out).card
    assert card.embedding_dim == 16 and card.training["arch"] == "airbench"
    assert card.metrics["test"]["roc_auc"] > 0.6  # 3 epochs on 200 images: well above chance
    ckpt = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=False)
    # the last step makes the weights the slow average: model and lookahead state agree
    for key, value in ckpt["model"].items():
        if value.is_floating_point():
            torch.testing.assert_close(value, ckpt["lookahead"][key], rtol=0, atol=0)
    with pytest.raises(SystemExit) as e:  # no head: D is the features; a usage error up front
        main(_small_args(tmp_path, tmp_path / "bad", "--arch", "airbench", "--embedding-dim", "8"))
    assert e.value.code == 2 and "set embedding_dim = 16" in capsys.readouterr().err


def _tiny_softmax_tower(flip_tta: bool) -> tuple[torch.nn.Module, torch.nn.Module, torch.Tensor]:
    """An airbench tower (eval mode) with a 3-class softmax loss, and five random images."""
    torch.manual_seed(0)
    tower = build_tower(
        "airbench", channels=1, height=12, width=12, embedding_dim=8, widths=[4, 8],
        mean=[0.5], std=[0.25], normalize=True, flip_tta=flip_tta,
    )  # fmt: skip
    loss = build_loss(LossSpec("softmax", None, 1 / 9, 0.1, True, 0.2), 3, 8)
    x = torch.randint(0, 256, (5, 1, 12, 12), dtype=torch.uint8)
    return tower.eval(), loss, x


def test_logits_readout_exports_the_classifier_scores_as_the_embedding(capsys):
    from training.train import readout_tower

    tower, loss, x = _tiny_softmax_tower(flip_tta=False)
    exported = readout_tower(tower, loss, "logits").eval()
    with torch.no_grad():
        want = torch.nn.functional.normalize(loss.loss.classifier(tower.embed(x)), dim=1)
        torch.testing.assert_close(exported(x), want)  # (5, 3): one score per class
        assert readout_tower(tower, loss, "features") is tower
        assert tower(x).shape == (5, 8)  # the trained tower itself is left as it was
    with pytest.raises(SystemExit) as e:  # a usage error, before any data is looked for
        main(_small_args(Path("/nonexistent"), Path("/nonexistent/x"), "--readout", "logits"))
    assert e.value.code == 2 and "needs loss = 'softmax'" in capsys.readouterr().err


def test_probabilities_readout_is_the_root_of_the_tempered_softmax_of_all_views(tmp_path):
    from app import artifact
    from training.train import readout_tower

    tower, loss, x = _tiny_softmax_tower(flip_tta=True)
    exported = readout_tower(tower, loss, "probabilities", temperature=0.5).eval()
    with torch.no_grad():
        scores = loss.loss.classifier(tower.embed(x)) + loss.loss.classifier(
            tower.embed(x.flip(-1))
        )
        want = torch.softmax(scores / 0.5, dim=1).sqrt()
        torch.testing.assert_close(exported(x), want)
        assert not torch.allclose(want, torch.nn.functional.normalize(scores, dim=1))
        # the exported file computes the same (TorchScript keeps the temperature)
        artifact.save_module(exported, tmp_path / "model.pt")
        torch.testing.assert_close(artifact.load_module(tmp_path / "model.pt")(x), want)
    # unit vectors, as the service wants
    torch.testing.assert_close(want.norm(dim=1), torch.ones(5))
    with pytest.raises(ValueError, match="readout_temperature must be above 0"):
        TrainConfig(loss="softmax", readout="probabilities", readout_temperature=0)


def test_probabilities_readout_of_cosface_uses_the_cosines_to_its_class_weights(tmp_path):
    from app import artifact
    from training.train import readout_tower

    torch.manual_seed(0)
    tower = build_tower(
        "convnet", channels=1, height=12, width=12, embedding_dim=6, widths=[4, 8],
        mean=[0.5], std=[0.25], normalize=True, flip_tta=True,
    ).eval()  # fmt: skip
    loss = build_loss(LossSpec("cosface", 0.35, 30.0, 0.1, True, 0.0), 4, 6)
    x = torch.randint(0, 256, (5, 1, 12, 12), dtype=torch.uint8)
    exported = readout_tower(tower, loss, "probabilities", temperature=0.1).eval()
    with torch.no_grad():
        cosines = tower(x) @ torch.nn.functional.normalize(loss.loss.W, dim=0)  # (5, 4)
        want = torch.softmax(cosines / 0.1, dim=1).sqrt()
        torch.testing.assert_close(exported(x), want)
        artifact.save_module(exported, tmp_path / "model.pt")
        torch.testing.assert_close(artifact.load_module(tmp_path / "model.pt")(x), want)
        assert tower(x).shape == (5, 6)  # the trained tower is left as it was
    with pytest.raises(ValueError, match="readout = 'probabilities' needs loss"):
        TrainConfig(loss="supcon", readout="probabilities")


def _noise_folder(root: Path, classes: int, per_class: int, size: int = 28) -> Path:
    """Class folders of random-noise PNGs: real image files whose labels cannot be learnt."""
    from PIL import Image

    g = torch.Generator().manual_seed(0)
    for c in range(classes):
        (root / f"class{c:02d}").mkdir(parents=True)
        for i in range(per_class):
            pixels = torch.randint(0, 256, (size, size), generator=g, dtype=torch.uint8)
            Image.fromarray(pixels.numpy(), mode="L").save(root / f"class{c:02d}" / f"{i}.png")
    return root


def test_config_rejects_bad_choices_before_loading_any_data(tmp_path):
    with pytest.raises(ValueError, match="loss = 'nonsense' is not valid; choose one of .*cosface"):
        TrainConfig(loss="nonsense")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="optimizer = 'adam' .* sgd, adamw, rmsprop"):
        TrainConfig(optimizer="adam")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="dataset = 'imagenet' .* folder:PATH"):
        TrainConfig(dataset="imagenet")
    with pytest.raises(ValueError, match="readout = 'logits' needs loss = 'softmax'"):
        TrainConfig(readout="logits")
    # the CLI turns them into a usage error (exit 2) before touching the (absent) data
    with pytest.raises(SystemExit) as e:
        parse_args(["--pad", "mirror", "--data-dir", str(tmp_path / "nowhere")])
    assert e.value.code == 2


def test_help_explains_every_option_with_its_choices(capsys):
    with pytest.raises(SystemExit):
        parse_args(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    for f in TrainConfig.__dataclass_fields__:
        flag = "--" + f.replace("_", "-")
        assert flag in text, flag
    assert "{sgd,adamw,rmsprop}" in text and "{auto,images,classes}" in text
    assert "(default: " in text and " () (default" not in text  # no option left without words
    from training.evaluate import main as evaluate_main

    with pytest.raises(SystemExit):
        evaluate_main(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    for flag in ("--dataset", "--test-fraction", "--pairs", "--plots DIR", "--precision"):
        assert flag in text
    assert "{float32,bfloat16}" in text


def test_out_defaults_to_model_store_name_and_is_never_overwritten(tmp_path, caplog):
    cfg = parse_args(["--dataset", f"folder:{tmp_path / 'signatures'}"])
    assert cfg.out == Path("model_store/signatures") and cfg.name == "signatures"
    assert parse_args(["--dataset", "folder:/x/y", "--name", "sig"]).out == Path("model_store/sig")
    assert parse_args(["--preset", "mnist"]).out == Path("model_store/mnist")
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "model.json").write_text("{}")
    assert main(_small_args(tmp_path, tmp_path / "m")) == 3
    assert "already holds a model" in caplog.text and "--overwrite" in caplog.text
    assert (tmp_path / "m" / "model.json").read_text() == "{}"  # untouched


def test_small_data_shrinks_the_batch_or_says_which_flag_to_change():
    cfg = TrainConfig(batch_size=256, min_steps_per_epoch=8)
    assert adapt_batch_size(cfg, 54_000, 1) == 256  # plenty of data: the recipe as written
    assert adapt_batch_size(cfg, 540, 1) == 67  # 10 classes x 60 images: 8 steps, not 2
    assert adapt_batch_size(cfg, 100, 1) == 32  # never below 32
    from training.train import TrainingRefused

    with pytest.raises(TrainingRefused, match="--batch-size"):
        adapt_batch_size(cfg, 20, 1)
    assert adapt_batch_size(TrainConfig(batch_size=256, min_steps_per_epoch=0), 540, 1) == 256


@pytest.mark.slow
def test_collapsed_small_run_is_refused_unless_forced(tmp_path, caplog):
    """Noise with 4 labels: nothing to learn, so the tower is no better than chance and must not
    be exported silently; --force exports it and the card says why it should not be trusted."""
    data = _noise_folder(tmp_path / "noise", classes=4, per_class=40)
    args = [
        *("--dataset", f"folder:{data}", "--channels", "1", "--out", str(tmp_path / "m")),
        *("--run-dir", str(tmp_path / "run"), "--widths", "8", "16", "--embedding-dim", "8"),
        *("--epochs", "2", "--plots", "false", "--threads", "1"),
    ]
    assert main(args) == 3
    assert "validation ROC AUC" in caplog.text and "--force" in caplog.text
    assert not (tmp_path / "m" / "model.json").exists()

    assert main([*args, "--force"]) == 0
    card = artifact.load(tmp_path / "m").card
    assert "below --min-val-auc" in card.metrics["forced_export"]
    assert card.training["batch_size"] == 32  # 256 would be 0 steps on 116 images
    by_p = card.metrics["by_precision"]
    assert set(by_p) == {"float32", "bfloat16"}
    for p in by_p.values():
        assert set(p) == {"pair_accuracy", "roc_auc", "eer"} and 0 <= p["pair_accuracy"] <= 1
    assert by_p["float32"]["pair_accuracy"] == card.metrics["test"]["accuracy"]
    made = card.training["provenance"]
    assert len(made["git_commit"]) == 40 and isinstance(made["git_clean"], bool)
    assert made["command"].startswith("python -m training.train --dataset folder:")
    assert made["command"].endswith("--force")


def test_class_disjoint_validation_split(tmp_path):
    data = _noise_folder(tmp_path / "many", classes=20, per_class=3, size=8)
    cfg = TrainConfig(dataset=f"folder:{data}")
    assert cfg.resolved_val_split(20) == "classes" and cfg.resolved_val_split(10) == "images"
    assert TrainConfig(dataset="mnist").resolved_val_split(10) == "images"
    b = load_dataset(f"folder:{data}", tmp_path, channels=1, cache_dir=None, val_class_fraction=0.2)
    assert len(b.val_classes) == 4
    held = torch.tensor([b.classes.index(c) for c in b.val_classes])
    assert torch.isin(b.val.labels, held).all()  # val is exactly the held classes...
    assert not torch.isin(b.train.labels, held).any()  # ...which training never sees
    assert set(b.test.labels.tolist()) == set(range(20))  # test keeps every class
    with pytest.raises(DataError, match="--val-split images"):
        load_dataset(
            f"folder:{data}",
            tmp_path,
            channels=1,
            cache_dir=None,
            val_class_fraction=0.2,
            exclude_classes=[f"class{i:02d}" for i in range(17)],
        )


@pytest.mark.slow
def test_evaluate_scores_a_whole_folder_and_never_rewrites_model_plots(
    tmp_path, capsys, small_mnist
):
    out = _train_small(tmp_path)
    from training.evaluate import main as evaluate_main

    def run(*extra: str) -> dict:
        assert evaluate_main([str(out), "--json", str(tmp_path / "e.json"), *extra]) == 0
        return json.loads((tmp_path / "e.json").read_text())

    whole = run("--dataset", f"folder:{MNIST_SMALL}")
    assert whole["images"] == 300 and whole["test"]["pairs"] == 600  # no re-split
    assert run("--dataset", f"folder:{MNIST_SMALL}", "--pairs", "100")["test"]["pairs"] == 100
    half = run("--dataset", f"folder:{MNIST_SMALL}", "--test-fraction", "0.5")
    assert half["images"] == 150
    assert run()["images"] == len(small_mnist.test)  # the card's data set: the trainer's split

    (out / "roc.png").write_bytes(b"committed")
    with pytest.raises(SystemExit):
        evaluate_main([str(out), "--plots", str(out)])
    assert "would rewrite" in capsys.readouterr().err
    run("--plots", str(tmp_path / "plots"))
    assert (out / "roc.png").read_bytes() == b"committed"
    assert (tmp_path / "plots" / "roc.png").stat().st_size > 1000


def test_presets_are_valid_configs_and_run_fields_are_not_recipe():
    for name, values in PRESETS.items():
        TrainConfig(**values, preset=name)  # raises on any invalid choice
    assert "epochs" not in RUN_FIELDS and "out" in RUN_FIELDS
    assert (
        PRESETS["seed-fashion"]["loss"] == "contrastive" and PRESETS["seed-fashion"]["margin"] == 1
    )


def test_few_shot_identifies_enrolled_classes_and_rejects_the_others():
    from training.evaluate import few_shot

    labels = torch.tensor([0, 0, 0, 1, 1, 1, 2, 2, 2])
    centres = torch.tensor([[0.0, 0.0], [3.0, 0.0], [0.0, 3.0]])
    emb = centres[labels] + 0.1 * torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]]).repeat(3, 1)
    got = few_shot(emb, labels, enrolled=[0, 1], k=1, threshold=0.5)
    assert got["probes"] == 4 and got["never_enrolled_probes"] == 3
    assert got["top1"] == 1.0 and got["accepted_enrolled"] == 1.0
    assert got["rejected_never_enrolled"] == 1.0
    strict = few_shot(emb, labels, enrolled=[0, 1], k=1, threshold=0.01)
    assert strict["accepted_enrolled"] == 0.0  # too tight a threshold rejects everyone
    loose = few_shot(emb, labels, enrolled=[0, 1], k=1, threshold=10.0)
    assert loose["rejected_never_enrolled"] == 0.0  # too loose accepts strangers
    # whatever the threshold given, the trade-off the embedding allows is the same, and here
    # (strangers 3 away, probes within 0.2) it rejects every stranger
    for got in (strict, loose):
        assert got["threshold_accepting_90"] < 0.3 and got["rejected_at_90_accepted"] == 1.0


def test_all_pairs_tar_is_the_roc_over_every_pair_at_the_false_accept_rate():
    from sklearn.metrics import roc_curve

    from training.evaluate import all_pairs_tar

    g = torch.Generator().manual_seed(0)
    labels = torch.arange(6).repeat_interleave(40)  # 240 images, 6 classes
    emb = torch.randn(6, 8, generator=g)[labels] + 0.8 * torch.randn(240, 8, generator=g)
    i, j = torch.triu_indices(240, 240, 1)
    d = (emb[i] - emb[j]).norm(dim=1).numpy()
    fpr, tpr, _ = roc_curve((labels[i] == labels[j]).numpy(), -d)
    for far in (1e-3, 1e-2, 0.1):
        want = tpr[fpr <= far].max()
        assert all_pairs_tar(emb, labels, far=far) == pytest.approx(want, abs=1e-12)
    # a sample of the images when there are more than max_images
    assert 0 < all_pairs_tar(emb, labels, far=1e-2, max_images=100) < 1
