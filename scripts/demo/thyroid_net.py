"""The thyroid demo model: a ResNet-18 image branch fused with a clinical branch.

TorchServe's ``--model-file`` rule: this file defines exactly one ``nn.Module`` class. The image branch is
``cnn`` (torchvision ResNet-18 from scratch, its ``fc`` replaced by the identity, so Grad-CAM layers are
named ``cnn.layer3`` / ``cnn.layer4``); the clinical branch is a small MLP over the
``camserve.tabular`` encoding (one-hot / standardised values plus a missing flag per feature). The fused
features end in ONE logit ``[B, 1]``: a binary classifier whose probability of ``malignant`` is its
sigmoid.
"""

import torch
import torchvision
from torch import nn


class ThyroidNet(nn.Module):
    """Image + tabular fusion with a single-logit head.

    Args:
        tabular_width: Length of the encoded clinical vector (``TabularSchema.width``).
        hidden: Width of the clinical branch.
        dropout: Dropout on the fused features during training.
    """

    def __init__(self, tabular_width: int, hidden: int = 32, dropout: float = 0.1) -> None:
        super().__init__()
        self.cnn = torchvision.models.resnet18(weights=None)
        self.cnn.fc = nn.Identity()
        self.tab = nn.Sequential(nn.Linear(tabular_width, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU())
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(512 + hidden, 1))

    def forward(self, image: torch.Tensor, tabular: torch.Tensor) -> torch.Tensor:
        return self.head(torch.cat([self.cnn(image), self.tab(tabular)], dim=1))
