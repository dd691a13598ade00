"""Closed-form linear probes of frozen representations (pure torch, float64 inside)."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

# A target whose variance is below this (relative to its scale) counts as constant.
CONSTANT_VARIANCE_TOLERANCE = 1e-10


def _as_2d(values: Tensor) -> Tensor:
    """(N,) -> (N, 1); (N, T) unchanged; as float64 for a well-conditioned solve."""
    values = torch.as_tensor(values).to(torch.float64)
    return values.unsqueeze(-1) if values.dim() == 1 else values


def r2_score(y_true: Tensor, y_pred: Tensor) -> Tensor:
    """Coefficient of determination per target column, shape (T,).

    A constant target (variance ~0) has no variance to explain; its R² is defined as 0
    (not NaN or -inf), so a probe on it reads as "explains nothing".
    """
    y_true, y_pred = _as_2d(y_true), _as_2d(y_pred)
    if y_true.shape != y_pred.shape:
        raise ValueError(
            f"r2_score got y_true {tuple(y_true.shape)} and y_pred {tuple(y_pred.shape)}; "
            "expected the same (N, T) shape"
        )
    mean = y_true.mean(0)
    ss_tot = ((y_true - mean) ** 2).sum(0)
    ss_res = ((y_true - y_pred) ** 2).sum(0)
    num_rows = y_true.shape[0]
    constant = ss_tot / num_rows <= CONSTANT_VARIANCE_TOLERANCE * (1.0 + mean**2)
    r2 = 1.0 - ss_res / torch.where(constant, torch.ones_like(ss_tot), ss_tot)
    return torch.where(constant, torch.zeros_like(r2), r2).float()


# Bootstrap resamples behind each R² interval: enough for stable 2.5 / 97.5 percentiles.
BOOTSTRAP_REPS = 1000


def episode_bootstrap_r2(
    target: Tensor,
    predicted: Tensor,
    episodes: Tensor,
    reps: int = BOOTSTRAP_REPS,
    seed: int = 0,
) -> list[float]:
    """95% percentile interval of R² when whole episodes (the independent unit) are resampled
    with replacement; a resample whose target is constant has no R² and is left out."""
    target, predicted = _as_2d(target)[:, 0], _as_2d(predicted)[:, 0]
    ids = sorted(set(torch.as_tensor(episodes).tolist()))
    rows = [torch.nonzero(torch.as_tensor(episodes) == e).flatten() for e in ids]
    generator = np.random.default_rng(seed)
    values = []
    for _ in range(reps):
        picked = torch.cat([rows[i] for i in generator.integers(0, len(ids), len(ids))])
        y = target[picked]
        varies = bool(((y - y.mean()) ** 2).sum() > 0)
        values.append(float(r2_score(y, predicted[picked])[0]) if varies else float("nan"))
    if np.isnan(values).all():
        return [float("nan"), float("nan")]
    low, high = np.nanpercentile(values, [2.5, 97.5])
    return [float(low), float(high)]


class RidgeProbe:
    """Ridge regression with intercept on standardised features.

    Features are standardised with the training mean / std (constant features get std 1,
    so they contribute nothing), which makes ``alpha`` comparable across representations.
    """

    def __init__(self, alpha: float = 1.0) -> None:
        if alpha < 0:
            raise ValueError(f"RidgeProbe alpha={alpha}; expected >= 0")
        self.alpha = float(alpha)
        self.feature_mean: Tensor | None = None
        self.feature_std: Tensor | None = None
        self.weight: Tensor | None = None  # (D, T)
        self.bias: Tensor | None = None  # (T,)

    def _standardise(self, features: Tensor) -> Tensor:
        return (_as_2d(features) - self.feature_mean) / self.feature_std

    def fit(self, features: Tensor, targets: Tensor) -> RidgeProbe:
        features, targets = _as_2d(features), _as_2d(targets)
        if features.shape[0] != targets.shape[0] or features.shape[0] < 2:
            raise ValueError(
                f"RidgeProbe.fit got {features.shape[0]} feature rows and {targets.shape[0]} "
                "target rows; expected the same number, at least 2"
            )
        self.feature_mean = features.mean(0)
        std = features.std(0)
        self.feature_std = torch.where(std > 1e-12, std, torch.ones_like(std))
        x = self._standardise(features)  # (N, D), centred
        target_mean = targets.mean(0)
        # Centred features and targets: the intercept is the target mean, unpenalised.
        gram = x.T @ x + self.alpha * torch.eye(
            x.shape[1], dtype=x.dtype, device=x.device
        )  # (D, D)
        rhs = x.T @ (targets - target_mean)  # (D, T)
        if self.alpha > 0:
            self.weight = torch.linalg.solve(gram, rhs)
        else:
            self.weight = torch.linalg.pinv(gram) @ rhs  # ordinary least squares, min-norm
        self.bias = target_mean
        return self

    def predict(self, features: Tensor) -> Tensor:
        """Predictions of shape (N, T), float32."""
        if self.weight is None:
            raise ValueError(
                "RidgeProbe.predict called before fit; expected fit(features, targets)"
            )
        return (self._standardise(features) @ self.weight + self.bias).float()

    def score(self, features: Tensor, targets: Tensor) -> Tensor:
        """R² per target, shape (T,)."""
        return r2_score(targets, self.predict(features))


# Ridge penalties tried by `select_alpha`: log-spaced from almost OLS to heavy shrinkage.
DEFAULT_ALPHAS = (1e-2, 1e-1, 1.0, 10.0, 100.0, 1e3, 1e4)


def select_alpha(
    features: Tensor,
    targets: Tensor,
    groups: Tensor,
    alphas: tuple[float, ...] = DEFAULT_ALPHAS,
    num_folds: int = 4,
) -> float:
    """The ridge penalty with the best mean R² under grouped K-fold cross-validation.

    Rows of one group (an episode) stay in one fold, so the choice is scored the way the
    probe is: on episodes it was not fitted on. Only training rows should be passed in.
    """
    features, targets = _as_2d(features), _as_2d(targets)
    unique = torch.unique(torch.as_tensor(groups))
    num_folds = min(num_folds, len(unique))
    if num_folds < 2:
        return float(alphas[len(alphas) // 2])
    fold_of_group = {int(g): i % num_folds for i, g in enumerate(unique.tolist())}
    fold = torch.tensor([fold_of_group[int(g)] for g in torch.as_tensor(groups).tolist()])
    best_alpha, best_score = float(alphas[0]), -float("inf")
    for alpha in alphas:
        scores = []
        for k in range(num_folds):
            train, test = fold != k, fold == k
            probe = RidgeProbe(alpha).fit(features[train], targets[train])
            scores.append(probe.score(features[test], targets[test]).mean())
        score = float(torch.stack(scores).mean())
        if score > best_score:
            best_alpha, best_score = float(alpha), score
    return best_alpha


def effective_rank(features: Tensor) -> float:
    """exp(entropy) of the normalised singular values of centred ``features`` (N, D): how
    many directions the representation really uses (Roy & Vetterli 2007)."""
    centred = features.double() - features.double().mean(0, keepdim=True)
    singular = torch.linalg.svdvals(centred)
    total = singular.sum()
    if total <= 0:
        return 0.0
    p = singular / total
    p = p[p > 0]
    return float(torch.exp(-(p * p.log()).sum()))
