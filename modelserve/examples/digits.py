"""``digits``: a small CNN trained in seconds on scikit-learn's bundled 8x8 digits.

Input: 64 pixel values in 0..16 (the data set's scale), shape [1, 8, 8]. The model divides
by 16 itself, so clients send the raw values.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

SEED = 0
INPUT_SHAPE = [1, 8, 8]


class DigitsNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(),
            nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(32 * 4 * 4, 64), nn.ReLU(), nn.Linear(64, 10)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x / 16.0))


@dataclass
class TrainedDigits:
    model: DigitsNet
    test_accuracy: float
    test_inputs: np.ndarray  # float32 [N, 1, 8, 8]
    test_labels: np.ndarray


def load_split() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """80/20 seeded split of the data set that ships with scikit-learn."""
    from sklearn.datasets import load_digits

    data = load_digits()
    x = data.images.astype(np.float32)[:, None, :, :]
    y = data.target.astype(np.int64)
    order = np.random.default_rng(SEED).permutation(len(x))
    cut = int(len(x) * 0.8)
    train, test = order[:cut], order[cut:]
    return x[train], y[train], x[test], y[test]


def train(epochs: int = 15) -> TrainedDigits:
    torch.manual_seed(SEED)
    x_train, y_train, x_test, y_test = load_split()
    model = DigitsNet()
    optimiser = torch.optim.Adam(model.parameters(), lr=3e-3)
    xt, yt = torch.from_numpy(x_train), torch.from_numpy(y_train)
    generator = torch.Generator().manual_seed(SEED)
    for _ in range(epochs):
        model.train()
        for idx in torch.randperm(len(xt), generator=generator).split(64):
            optimiser.zero_grad()
            loss = nn.functional.cross_entropy(model(xt[idx]), yt[idx])
            loss.backward()
            optimiser.step()
    model.eval()
    with torch.inference_mode():
        predicted = model(torch.from_numpy(x_test)).argmax(1).numpy()
    accuracy = float((predicted == y_test).mean())
    return TrainedDigits(model, accuracy, x_test, y_test)
