"""The evaluator classifier: a small CNN trained per data set whose penultimate layer gives the
features for FID, KID and precision/recall, and whose predictions give class faithfulness."""
import torch
import torch.nn as nn


def _block(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1), nn.BatchNorm2d(c_out), nn.ReLU(),
                         nn.Conv2d(c_out, c_out, 3, padding=1), nn.BatchNorm2d(c_out), nn.ReLU(),
                         nn.MaxPool2d(2))


class EvaluatorCNN(nn.Module):
    """Three conv blocks, global average pooling, a 128-d feature layer, a linear classifier."""

    def __init__(self, channels: int = 3, num_classes: int = 10, width: int = 32,
                 feature_dim: int = 128):
        super().__init__()
        self.body = nn.Sequential(_block(channels, width), _block(width, 2 * width),
                                  _block(2 * width, 4 * width), nn.AdaptiveAvgPool2d(1),
                                  nn.Flatten(), nn.Linear(4 * width, feature_dim), nn.ReLU())
        self.head = nn.Linear(feature_dim, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))
