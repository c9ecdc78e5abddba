"""A thyroid-style multimodal model: a ResNet-18 image branch (`cnn`) fused with a tabular branch, one logit."""

import torch
import torchvision
from torch import nn


class FusionNet(nn.Module):
    def __init__(self, tabular_width: int, hidden: int = 16) -> None:
        super().__init__()
        self.cnn = torchvision.models.resnet18(weights=None)
        self.cnn.fc = nn.Identity()
        self.tab = nn.Sequential(nn.Linear(tabular_width, hidden), nn.ReLU())
        self.head = nn.Linear(512 + hidden, 1)

    def forward(self, image: torch.Tensor, tabular: torch.Tensor) -> torch.Tensor:
        return self.head(torch.cat([self.cnn(image), self.tab(tabular)], dim=1))
