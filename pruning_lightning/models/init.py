"""Weight initialisation: the one place it lives.

The paper initialises every conv and linear weight with Kaiming normal (fan_in, ReLU gain), so
that theta0, the weights the pruning criteria score, follow the published recipe rather than
PyTorch's default (Kaiming *uniform* with a=sqrt(5), about 2.4x smaller in std).
"""

from __future__ import annotations

from torch import nn

_BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def init_weights(module: nn.Module) -> None:
    """Initialise ``module`` and all its submodules in place.

    Conv2d / Linear: weight ~ N(0, 2 / fan_in), bias 0. BatchNorm: weight 1, bias 0.
    Draws from the global torch RNG in module order, so the same ``torch.manual_seed`` before
    building a network gives bit-identical weights.
    """
    for m in module.modules():
        if isinstance(m, nn.Conv2d | nn.Linear):
            nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, _BATCH_NORMS) and m.affine:
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
