"""Two-dimensional t-SNE embeddings of an (N, D) array, and the numbers that say how good they are.

Nothing here knows about MNIST files, models or MLflow: :mod:`mnist_bench.tsne` feeds it pixels
or features and records what comes back.

Speed (see ``docs/tsne.md``): the input is first projected onto its top 50 principal components;
openTSNE then finds each point's ``3 * perplexity`` nearest neighbours with Annoy and optimises
with FFT-interpolated repulsive forces (Barnes-Hut below 10,000 points, openTSNE's own choice).
Fewer Annoy trees (10 instead of openTSNE's 50) and a shorter schedule (100 early-exaggeration
+ 150 iterations instead of 250 + 500) make 50,000 points take about half a minute on two
cores; :func:`knn_accuracy` is the check that this does not cost a worse map.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from tqdm import tqdm

from mnist_bench.config import choice

log = logging.getLogger(__name__)
logging.getLogger("openTSNE").setLevel(logging.WARNING)  # its INFO lines repeat our settings

KNN_K = 10                # neighbours of the quality figure
HOLDOUT = 0.2             # share of the embedded points that the quality figure is measured on
SILHOUETTE_POINTS = 5_000  # silhouette is O(N^2): measured on a random subset of this size
ANNOY_TREES = 10
PROGRESS_EVERY = 25       # t-SNE iterations between progress-bar updates
SKLEARN_EXAGGERATION_ITER = 250  # fixed inside sklearn.manifold.TSNE
POINTS_PER_THREAD = 25_000


TSNEBackend = choice("TSNEBackend", "opentsne", "sklearn", module=__name__)


@dataclass
class TSNEParams:
    """How to run t-SNE; also the schema of the ``tsne`` node of ``conf/tsne.yaml``."""

    backend: TSNEBackend = TSNEBackend.opentsne
    perplexity: float = 30.0
    early_exaggeration_iter: int = 100
    n_iter: int = 150
    n_jobs: int | None = None

    def jobs(self, n_points: int) -> int:
        """``n_jobs``, else one thread per ``POINTS_PER_THREAD`` points, up to every core.

        Below that, openTSNE's threads meet at a barrier several times per iteration for little
        work each time; on this shared 2-core VM two threads were 2-4 times slower than one for
        1,000-10,000 points (docs/tsne.md).
        """
        if self.n_jobs:
            return self.n_jobs
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
        return max(1, min(cores or 1, n_points // POINTS_PER_THREAD))


def pca(x: np.ndarray, dims: int) -> np.ndarray:
    """Project onto the top ``dims`` principal components; unchanged if ``x`` has no more columns.

    Exact, through the D x D covariance matrix: about a second for 50,000 x 784 on two cores.
    """
    if x.shape[1] <= dims:
        return np.ascontiguousarray(x, dtype=np.float32)
    centred = x.astype(np.float32) - x.mean(axis=0, dtype=np.float32)
    _, vectors = np.linalg.eigh(centred.T @ centred)  # eigenvalues in ascending order
    return np.ascontiguousarray(centred @ vectors[:, ::-1][:, :dims])


def _progress_bar(total: int) -> tuple[tqdm, Callable[..., None]]:
    """A tqdm bar and the openTSNE callback that advances it and shows the KL divergence."""
    bar = tqdm(total=total, desc="t-SNE", unit="it", dynamic_ncols=True)

    def advance(_iteration: int, error: float, _embedding: np.ndarray) -> None:
        bar.update(min(PROGRESS_EVERY, bar.total - bar.n))
        bar.set_postfix(kl=f"{error:.3f}")

    return bar, advance


def _opentsne(x: np.ndarray, params: TSNEParams, seed: int) -> np.ndarray:
    import openTSNE

    jobs = params.jobs(len(x))
    log.info("openTSNE: %d nearest neighbours of %d points, then %d + %d iterations, %d thread(s)",
             min(len(x) - 1, int(3 * params.perplexity)), len(x),
             params.early_exaggeration_iter, params.n_iter, jobs)
    bar, advance = _progress_bar(params.early_exaggeration_iter + params.n_iter)
    tsne = openTSNE.TSNE(
        perplexity=params.perplexity, early_exaggeration_iter=params.early_exaggeration_iter,
        n_iter=params.n_iter, n_jobs=jobs, neighbors="annoy", knn_kwargs={"n_trees": ANNOY_TREES},
        callbacks=advance, callbacks_every_iters=PROGRESS_EVERY, random_state=seed)
    with bar:
        return np.asarray(tsne.fit(x))


def _sklearn(x: np.ndarray, params: TSNEParams, seed: int) -> np.ndarray:
    """The report's ``sklearn.manifold.TSNE(n_components=2)`` (Barnes-Hut); it prints its own
    progress every 50 iterations."""
    from sklearn.manifold import TSNE

    tsne = TSNE(n_components=2, perplexity=params.perplexity,
                max_iter=SKLEARN_EXAGGERATION_ITER + params.n_iter, init="pca",
                learning_rate="auto", n_jobs=params.jobs(len(x)), random_state=seed, verbose=2)
    return tsne.fit_transform(x)


BACKENDS: dict[str, Callable[[np.ndarray, TSNEParams, int], np.ndarray]] = {
    "opentsne": _opentsne,
    "sklearn": _sklearn,
}


def tsne(x: np.ndarray, params: TSNEParams, pca_dims: int = 50, seed: int = 0) -> np.ndarray:
    """(N, D) -> (N, 2) float32: PCA to ``pca_dims`` dimensions, then t-SNE with ``params``."""
    reduced = pca(x, pca_dims)
    return BACKENDS[params.backend](reduced, params, seed).astype(np.float32)


def knn_accuracy(embedding: np.ndarray, labels: np.ndarray, seed: int = 0) -> float:
    """Accuracy of a 10-nearest-neighbour vote in the 2-D map, on a held-out fifth of the points.

    The vote is fitted on the other four fifths: a map where digits mix scores low, however nice
    it looks.
    """
    from sklearn.model_selection import train_test_split  # here: TSNEParams is a config schema
    from sklearn.neighbors import KNeighborsClassifier

    fit_x, test_x, fit_y, test_y = train_test_split(embedding, labels, test_size=HOLDOUT,
                                                    random_state=seed)
    return float(KNeighborsClassifier(KNN_K).fit(fit_x, fit_y).score(test_x, test_y))


def class_spread(embedding: np.ndarray, labels: np.ndarray) -> dict[int, float]:
    """Per digit: mean distance of its points to their centre, divided by the mean distance of
    all points to the centre of the whole map.

    Scale-free, so maps of different sizes compare: 1 means the digit is spread over the map
    like the data as a whole; a compact cluster is well below 1.
    """
    overall = np.linalg.norm(embedding - embedding.mean(axis=0), axis=1).mean()
    spread = {}
    for digit in np.unique(labels):
        points = embedding[labels == digit]
        spread[int(digit)] = float(
            np.linalg.norm(points - points.mean(axis=0), axis=1).mean() / overall)
    return spread


def class_silhouette(embedding: np.ndarray, labels: np.ndarray,
                     seed: int = 0) -> dict[int, float]:
    """Per digit: mean silhouette of its points (-1..1; higher is a tighter, better separated
    cluster), on at most ``SILHOUETTE_POINTS`` random points."""
    from sklearn.metrics import silhouette_samples

    rng = np.random.default_rng(seed)
    keep = rng.permutation(len(labels))[:SILHOUETTE_POINTS]
    values = silhouette_samples(embedding[keep], labels[keep])
    return {int(d): float(values[labels[keep] == d].mean()) for d in np.unique(labels[keep])}
