"""The evaluator classifier: a small CNN trained per data set whose penultimate layer gives the
features for FID, KID and precision/recall, and whose predictions give class faithfulness."""
import torch
import torch.nn as nn


def conv_block(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1), nn.BatchNorm2d(c_out), nn.ReLU(),
                         nn.Conv2d(c_out, c_out, 3, padding=1), nn.BatchNorm2d(c_out), nn.ReLU(),
                         nn.MaxPool2d(2))


class EvaluatorCNN(nn.Module):
    """Three conv blocks, global average pooling, a 128-d feature layer, a linear classifier,
    and (n_factors > 0) a linear regression of the data set's continuous factors from the same
    features, so that the features also measure what the class does not (hue, size, position)."""

    def __init__(self, channels: int = 3, num_classes: int = 10, width: int = 32,
                 feature_dim: int = 128, n_factors: int = 0):
        super().__init__()
        self.body = nn.Sequential(conv_block(channels, width), conv_block(width, 2 * width),
                                  conv_block(2 * width, 4 * width), nn.AdaptiveAvgPool2d(1),
                                  nn.Flatten(), nn.Linear(4 * width, feature_dim), nn.ReLU())
        self.head = nn.Linear(feature_dim, num_classes)
        self.factor_head = nn.Linear(feature_dim, n_factors) if n_factors else None

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))
