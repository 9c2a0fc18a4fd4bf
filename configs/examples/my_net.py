"""A network of your own: any nn.Module whose output is the logits (batch, num_classes).

Run from this folder, so that `my_net` is importable from the current directory:
    cd configs/examples
    pruning-lightning fit --config ../quickstart.yaml --config user_module.yaml
"""

from torch import Tensor, nn


class TinyNet(nn.Module):
    """Two conv blocks and a linear head; Conv2d and Linear weights are what gets pruned."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1, width: int = 32) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(),
            nn.Conv2d(width, 2 * width, 3, padding=1, bias=False),
            nn.BatchNorm2d(2 * width),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.classifier = nn.Linear(2 * width, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x))
