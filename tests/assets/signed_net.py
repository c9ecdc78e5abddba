"""A binary model whose right Grad-CAM is known: evidence for class 1 is red, for class 0 blue.

Feature map A = (relu(red), relu(blue)); one logit = mean(A_red) - mean(A_blue) + w * tabular[0].
Explaining class 1 (+logit) must light up red regions; class 0 (-logit) must light up blue ones.
"""

import torch
from torch import nn


class SignedNet(nn.Module):
    def __init__(self, tabular_weight: float = 0.0) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 2, 1, bias=False), nn.ReLU())
        with torch.no_grad():
            self.features[0].weight.zero_()
            self.features[0].weight[0, 0] = 1.0  # red
            self.features[0].weight[1, 2] = 1.0  # blue
        self.head = nn.Linear(2, 1, bias=False)
        with torch.no_grad():
            self.head.weight.copy_(torch.tensor([[1.0, -1.0]]))
        self.tabular_weight = tabular_weight

    def forward(self, image: torch.Tensor, tabular: torch.Tensor | None = None) -> torch.Tensor:
        logit = self.head(self.features(image).mean((2, 3)))
        if tabular is not None:
            logit = logit + self.tabular_weight * tabular[:, :1]
        return logit
