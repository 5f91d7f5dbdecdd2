"""The PyTorch peers of the speed benchmark, written by hand (no torchvision).

Two networks:

- `PaperAlexNet`: the network of Krizhevsky, Sutskever & Hinton, NIPS 2012 (§3.5, Fig. 2),
  the same function as ``keras_alexnet.AlexNet(grouping="grouped")``: 96/256/384/384/256
  kernels, conv2, conv4 and conv5 with ``groups=2`` (the paper's two towers), local
  response normalisation after the ReLU of conv1 and conv2 (§3.3), overlapping 3/2 max
  pooling (§3.4), dropout 0.5 on fc6 and fc7 (§4.2). 60,965,224 parameters.
- `TorchvisionAlexNet`: the later "one weird trick" variant that torchvision ships as
  ``alexnet`` (Krizhevsky 2014): 64/192/384/256/256 kernels, no LRN, no groups, padding 2
  on conv1 and a 6x6 adaptive average pool before the classifier. 61,100,840 parameters.
  It is PyTorch's fastest AlexNet, so it is the second peer.

LRN: the paper's ``b_i = a_i / (k + alpha * sum_j a_j^2) ** beta`` with k=2, n=5,
alpha=1e-4, beta=0.75 is ``nn.LocalResponseNorm(5, alpha=5e-4, beta=0.75, k=2)``:
PyTorch divides alpha by the window size. With groups=2, each of the paper's towers
normalises only its own maps (a window never crosses from map 47 into map 48), so the
paper network normalises each half separately (`GroupedLRN`), as keras_alexnet does.

This module imports only torch, so it can be imported by a worker process that must not
load TensorFlow.
"""

import torch
from torch import nn

PAPER_PARAMS = 60_965_224
TORCHVISION_PARAMS = 61_100_840


class GroupedLRN(nn.Module):
    """`nn.LocalResponseNorm` applied to each of ``groups`` channel groups on its own."""

    def __init__(self, size=5, alpha=1e-4, beta=0.75, k=2.0, groups=2):
        super().__init__()
        self.groups = groups
        # PyTorch divides alpha by size; the paper does not (docs/paper.md §3.3).
        self.lrn = nn.LocalResponseNorm(size, alpha=alpha * size, beta=beta, k=k)

    def forward(self, x):
        if self.groups == 1:
            return self.lrn(x)
        return torch.cat([self.lrn(part) for part in x.chunk(self.groups, dim=1)], dim=1)


class PaperAlexNet(nn.Module):
    """The paper's AlexNet on one device: grouped convs for the two towers (Fig. 2)."""

    def __init__(self, num_classes=1000, dropout=0.5, lrn=True):
        super().__init__()

        def norm():
            return GroupedLRN(groups=2) if lrn else nn.Identity()

        self.features = nn.Sequential(
            nn.Conv2d(3, 96, 11, stride=4),  # conv1: 227 -> 55 (the towers split its output)
            nn.ReLU(inplace=True),
            norm(),
            nn.MaxPool2d(3, 2),  # 55 -> 27
            nn.Conv2d(96, 256, 5, padding=2, groups=2),  # conv2
            nn.ReLU(inplace=True),
            norm(),
            nn.MaxPool2d(3, 2),  # 27 -> 13
            nn.Conv2d(256, 384, 3, padding=1),  # conv3 reads both towers
            nn.ReLU(inplace=True),
            nn.Conv2d(384, 384, 3, padding=1, groups=2),  # conv4
            nn.ReLU(inplace=True),
            nn.Conv2d(384, 256, 3, padding=1, groups=2),  # conv5
            nn.ReLU(inplace=True),
            nn.MaxPool2d(3, 2),  # 13 -> 6
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(256 * 6 * 6, 4096),  # fc6
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(4096, 4096),  # fc7
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(4096, num_classes),  # fc8 (logits; the loss applies the softmax)
        )

    def forward(self, x):
        return self.classifier(self.features(x))


class TorchvisionAlexNet(nn.Module):
    """torchvision's ``alexnet`` ("one weird trick"), layer for layer, written by hand."""

    def __init__(self, num_classes=1000, dropout=0.5):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 64, 11, stride=4, padding=2),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(3, 2),
            nn.Conv2d(64, 192, 5, padding=2),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(3, 2),
            nn.Conv2d(192, 384, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(384, 256, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(256, 256, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(3, 2),
        )
        self.avgpool = nn.AdaptiveAvgPool2d((6, 6))
        self.classifier = nn.Sequential(
            nn.Dropout(dropout),
            nn.Linear(256 * 6 * 6, 4096),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(4096, 4096),
            nn.ReLU(inplace=True),
            nn.Linear(4096, num_classes),
        )

    def forward(self, x):
        x = self.avgpool(self.features(x))
        return self.classifier(torch.flatten(x, 1))


def count_params(model):
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def build(net, num_classes=1000):
    """``net``: ``"paper"`` or ``"torchvision"``. Asserts the published parameter count."""
    if net == "paper":
        model, expected = PaperAlexNet(num_classes), PAPER_PARAMS
    elif net == "torchvision":
        model, expected = TorchvisionAlexNet(num_classes), TORCHVISION_PARAMS
    else:
        raise ValueError(f"net must be 'paper' or 'torchvision', got {net!r}")
    if num_classes == 1000:
        n = count_params(model)
        assert n == expected, f"{net}: {n:,} parameters, expected {expected:,}"
    return model


if __name__ == "__main__":
    for net in ("paper", "torchvision"):
        m = build(net)
        y = m(torch.zeros(2, 3, 227, 227))
        print(f"{net}: {count_params(m):,} parameters, output {tuple(y.shape)}")
