"""app/setdistance.py: the Fréchet distance against closed forms and a scipy reference."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg
import torch
from conftest import FIXTURES
from towers import TinyTower

from app import images
from app.setdistance import (
    GaussianStats,
    RunningStats,
    frechet_distance,
    mean_distance,
    sqrt_psd,
    trace_sqrt_product,
)


def reference_frechet(a: np.ndarray, b: np.ndarray) -> float:
    """The FID reference formula (pytorch-fid's): scipy sqrtm of the non-symmetric product."""
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean = scipy.linalg.sqrtm(cov_a @ cov_b)
    assert np.abs(covmean.imag).max() < 1e-8
    diff = mu_a - mu_b
    return float(diff @ diff + np.trace(cov_a) + np.trace(cov_b) - 2 * np.trace(covmean.real))


def random_cov(rng: np.random.Generator, d: int, rank: int | None = None) -> np.ndarray:
    m = rng.normal(size=(d, rank or d))
    return m @ m.T / d


def gaussian(mean: np.ndarray, cov: np.ndarray, count: int = 100) -> GaussianStats:
    return GaussianStats(count, mean, cov)


def test_closed_form_in_one_dimension():
    # N(m1, s1^2) vs N(m2, s2^2): (m1 - m2)^2 + (s1 - s2)^2
    a = gaussian(np.array([0.5]), np.array([[4.0]]))
    b = gaussian(np.array([-1.0]), np.array([[0.25]]))
    assert frechet_distance(a, b) == pytest.approx(1.5**2 + (2 - 0.5) ** 2, rel=1e-12)


def test_closed_form_for_covariances_with_shared_axes():
    # S_a = Q diag(a) Q^T, S_b = Q diag(b) Q^T commute: Tr((S_a S_b)^1/2) = sum sqrt(a_i b_i),
    # so the distance is |mu_a - mu_b|^2 + sum (sqrt(a_i) - sqrt(b_i))^2.
    rng = np.random.default_rng(0)
    d = 12
    q, _ = np.linalg.qr(rng.normal(size=(d, d)))
    va, vb = rng.uniform(0.1, 3, d), rng.uniform(0.1, 3, d)
    mu_a, mu_b = rng.normal(size=d), rng.normal(size=d)
    a = gaussian(mu_a, q @ np.diag(va) @ q.T)
    b = gaussian(mu_b, q @ np.diag(vb) @ q.T)
    expected = np.sum((mu_a - mu_b) ** 2) + np.sum((np.sqrt(va) - np.sqrt(vb)) ** 2)
    assert frechet_distance(a, b) == pytest.approx(expected, rel=1e-10)
    assert frechet_distance(b, a) == pytest.approx(expected, rel=1e-10)


def test_singular_covariances_need_no_ridge():
    # Rank-deficient (fewer images than dimensions): the closed form still holds exactly.
    va = np.array([2.0, 1.0, 0.0, 0.0])
    vb = np.array([0.5, 0.0, 3.0, 0.0])
    a = gaussian(np.zeros(4), np.diag(va))
    b = gaussian(np.ones(4), np.diag(vb))
    expected = 4 + np.sum((np.sqrt(va) - np.sqrt(vb)) ** 2)
    assert frechet_distance(a, b) == pytest.approx(expected, rel=1e-12)


def test_general_covariances_match_scipy_sqrtm():
    rng = np.random.default_rng(1)
    ca, cb = random_cov(rng, 20), random_cov(rng, 20)
    ours = trace_sqrt_product(ca, cb)
    theirs = np.trace(scipy.linalg.sqrtm(ca @ cb)).real
    assert ours == pytest.approx(theirs, rel=1e-9)
    root = sqrt_psd(ca)
    np.testing.assert_allclose(root @ root, ca, atol=1e-10)


def test_matches_the_reference_on_sampled_embeddings():
    rng = np.random.default_rng(2)
    a = rng.multivariate_normal(rng.normal(size=8), random_cov(rng, 8), size=400)
    b = rng.multivariate_normal(rng.normal(size=8), random_cov(rng, 8), size=300)
    ours = frechet_distance(GaussianStats.of(a), GaussianStats.of(b))
    assert ours == pytest.approx(reference_frechet(a, b), rel=1e-6)


def test_matches_the_reference_on_tower_embeddings_of_real_digits():
    torch.manual_seed(0)
    tower = TinyTower(channels=1).eval()

    def embed(digit: str) -> np.ndarray:
        paths = sorted((FIXTURES / "mnist_small" / digit).glob("*.png"))
        x = torch.stack([images.decode(p.read_bytes(), "L", (28, 28), 10**6) for p in paths])
        with torch.inference_mode():
            return tower(x).double().numpy()  # (30, 16), unit length

    a, b = embed("3"), embed("8")
    ours = frechet_distance(GaussianStats.of(a), GaussianStats.of(b))
    assert ours > 0
    assert ours == pytest.approx(reference_frechet(a, b), rel=1e-6)


def test_identical_sets_are_zero_up_to_rounding():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(50, 16)) / 4 + 1  # a mean far from 0, like unit embeddings
    stats = GaussianStats.of(x)
    assert 0 <= frechet_distance(stats, stats) < 1e-12
    assert frechet_distance(GaussianStats.of(x[::-1].copy()), stats) < 1e-12


def test_running_stats_in_batches_equal_numpy():
    rng = np.random.default_rng(4)
    x = rng.normal(size=(1000, 6)) * 0.01 + 100  # cancellation-prone: large mean, tiny spread
    running = RunningStats(6)
    for start in range(0, 1000, 37):
        running.update(x[start : start + 37])
    other = RunningStats.of(x[:10])
    other.merge(RunningStats.of(x[10:]))
    for stats in (running.stats(), other.stats()):
        assert stats.count == 1000
        np.testing.assert_allclose(stats.mean, x.mean(0), rtol=1e-12)
        np.testing.assert_allclose(stats.cov, np.cov(x, rowvar=False), rtol=1e-7, atol=1e-15)


def test_running_stats_refuse_bad_input():
    running = RunningStats(4)
    with pytest.raises(ValueError, match="dim 3"):
        running.update(np.zeros((2, 3)))
    running.update(np.zeros((1, 4)))
    with pytest.raises(ValueError, match="at least 2"):
        running.stats()


def test_mean_distance_is_the_mean_over_all_pairs():
    rng = np.random.default_rng(5)
    a, b = rng.normal(size=(13, 5)), rng.normal(size=(7, 5))
    brute = np.mean([np.linalg.norm(x - y) for x in a for y in b])
    assert mean_distance(a, b, block=4) == pytest.approx(brute, rel=1e-12)
    assert mean_distance(a[:1], a[:1]) == 0.0
