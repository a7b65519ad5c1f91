"""A small, fast residual ConvNet for small images (Fashion-MNIST, CIFAR-size, tests).

ResNet-9 shaped (stem, three stages of conv + pool, residual blocks after the first and
third), at a fraction of ResNet-18's compute: ``convnet-s`` is ~10 M multiply-adds on a
28 px image, so a Fashion-MNIST epoch takes about a minute on two CPU cores.
"""

from __future__ import annotations

from torch import nn


def _cbr(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class _Residual(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.body = nn.Sequential(_cbr(c, c), _cbr(c, c))

    def forward(self, x):
        return x + self.body(x)


class ConvNet(nn.Module):
    """Backbone ``(N, 3, S, S) -> (N, widths[-1])``.

    Args:
        widths: channels of the stem and the three stages.
    """

    def __init__(self, widths: tuple[int, int, int, int]):
        super().__init__()
        w0, w1, w2, w3 = widths
        self.net = nn.Sequential(
            _cbr(3, w0), nn.MaxPool2d(2),
            _cbr(w0, w1), _Residual(w1), nn.MaxPool2d(2),
            _cbr(w1, w2), nn.MaxPool2d(2),
            _cbr(w2, w3), _Residual(w3),
            nn.AdaptiveMaxPool2d(1), nn.Flatten(),
        )
        self.num_features = w3

    def forward(self, x):
        return self.net(x)


CONVNETS = {"convnet-s": (32, 64, 128, 256), "convnet-xs": (16, 32, 64, 128), "convnet-xxs": (8, 16, 32, 32)}
