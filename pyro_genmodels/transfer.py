"""The lecture's transfer experiment: features learned without labels help with few labels.

1. Pretrain a model without labels (``"vae"`` or ``"autoencoder"``) on every
   training image.
2. Keep ``labels_per_class`` labelled images per class.
3. Train the same classifier (the encoder architecture plus a linear layer) from
   scratch, and initialized from the pretrained encoder (then fine-tuned); fit a
   linear probe (logistic regression) on the pretrained codes (the q(z|x) means
   for a VAE) and, as a baseline, on raw pixels.
4. Report test accuracy for each.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from torch import nn

from .data import load_dataset
from .infer import TrainConfig, fit
from .registry import create_model


def labeled_subset(labels: torch.Tensor, per_class: int, seed: int = 0) -> torch.Tensor:
    """Indices of ``per_class`` examples of every class (fewer if a class is smaller)."""
    gen = torch.Generator().manual_seed(seed)
    picks = []
    for cls in labels.unique():
        idx = (labels == cls).nonzero().flatten()
        picks.append(idx[torch.randperm(len(idx), generator=gen)[:per_class]])
    return torch.cat(picks).sort().values


class Classifier(nn.Module):
    """An encoder ``(..., C, H, W) -> (..., F)`` followed by a linear layer to the classes."""

    def __init__(self, encoder: nn.Module, num_classes: int):
        super().__init__()
        self.encoder = encoder
        self.head = nn.Linear(encoder.feature_dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(x))


def train_classifier(
    clf: Classifier, x, y, epochs: int = 100, lr: float = 1e-3, batch_size: int = 64, seed=0
) -> Classifier:
    """Minimize cross-entropy with Adam on (x, y)."""
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(clf.parameters(), lr=lr)
    clf.train()
    for _ in range(epochs):
        for idx in torch.randperm(len(x), generator=gen).split(batch_size):
            loss = nn.functional.cross_entropy(clf(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return clf.eval()


@torch.no_grad()
def accuracy(clf: Classifier, x: torch.Tensor, y: torch.Tensor) -> float:
    return (clf(x).argmax(-1) == y).float().mean().item()


def probe_accuracy(train_features, y_train, test_features, y_test) -> float:
    """Test accuracy of a logistic regression fitted on the training features."""
    probe = LogisticRegression(max_iter=2000)
    probe.fit(np.asarray(train_features), np.asarray(y_train))
    return float(probe.score(np.asarray(test_features), np.asarray(y_test)))


@dataclass
class TransferResult:
    dataset: str
    pretrain: str
    labels_per_class: int
    num_labeled: int
    accuracies: dict  # method -> test accuracy
    seconds: float


def transfer_experiment(
    dataset: str = "digits",
    pretrain: str = "vae",
    labels_per_class: int = 100,
    pretrain_epochs: int = 20,
    finetune_epochs: int = 100,
    latent_dim: int = 32,
    hidden_dims=(256, 128),
    data_dir=None,
    pretrain_limit: int | None = None,
    test_limit: int | None = None,
    seed: int = 0,
) -> TransferResult:
    """Run the experiment; see the module docstring."""
    start = time.perf_counter()
    train = load_dataset(dataset, "train", "binary", data_dir=data_dir)
    valid = load_dataset(dataset, "valid", "binary", data_dir=data_dir).fixed()
    test = load_dataset(dataset, "test", "binary", data_dir=data_dir, limit=test_limit)
    if train.labels is None or len(train.labels) == 0:
        raise ValueError(
            f"{dataset} has no labels; use mnist or digits for the transfer experiment"
        )
    x_test, y_test = test.fixed(), test.labels
    torch.manual_seed(seed)
    model = create_model(
        pretrain, image_shape=train.image_shape, latent_dim=latent_dim, hidden_dims=hidden_dims
    )
    unlabeled = train.subset(pretrain_limit)
    fit(model, unlabeled, valid, TrainConfig(epochs=pretrain_epochs, seed=seed, progress=False))

    x_all = train.fixed()
    idx = labeled_subset(train.labels, labels_per_class, seed)
    x_lab, y_lab = x_all[idx], train.labels[idx]
    num_classes = int(train.labels.max()) + 1
    acc = {}
    torch.manual_seed(seed)
    scratch = Classifier(copy.deepcopy(model.encoder), num_classes)
    for layer in scratch.encoder.modules():  # same architecture, fresh weights
        if hasattr(layer, "reset_parameters"):
            layer.reset_parameters()
    acc["classifier from scratch"] = accuracy(
        train_classifier(scratch, x_lab, y_lab, finetune_epochs, seed=seed), x_test, y_test
    )
    torch.manual_seed(seed)
    pretrained = Classifier(copy.deepcopy(model.encoder), num_classes)
    acc[f"classifier initialized from the {pretrain} encoder"] = accuracy(
        train_classifier(pretrained, x_lab, y_lab, finetune_epochs, seed=seed), x_test, y_test
    )
    codes = "q(z|x) means" if pretrain == "vae" else "codes"
    acc[f"linear probe on {pretrain} {codes}"] = probe_accuracy(
        model.encode(x_lab), y_lab, model.encode(x_test), y_test
    )
    acc["linear probe on pixels"] = probe_accuracy(
        x_lab.flatten(1), y_lab, x_test.flatten(1), y_test
    )
    return TransferResult(
        dataset, pretrain, labels_per_class, len(idx), acc, time.perf_counter() - start
    )
