"""ArcFace face embeddings (Deng et al., CVPR 2019) with insightface's IResNet backbone (`arcface_torch`).

Loads the published backbone state dicts (`backbone.pth`, e.g. ms1mv3_arcface_r100) with
`weights_only=True`; depth and widths are read from the state dict, so r50, r100 and the tiny
test model go through one path. Input: 112x112 RGB face crops scaled to [-1, 1].
"""

from __future__ import annotations

import re

import cv2
import numpy as np
import torch
from torch import nn

from model.hub import resolve_file

FACE_SIZE = 112


class IBasicBlock(nn.Module):
    """BN-conv-BN-PReLU-conv(stride)-BN with a residual, as in arcface_torch/backbones/iresnet.py."""

    def __init__(self, inplanes: int, planes: int, stride: int):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(inplanes, eps=1e-5)
        self.conv1 = nn.Conv2d(inplanes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes, eps=1e-5)
        self.prelu = nn.PReLU(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes, eps=1e-5)
        self.downsample = None
        if stride != 1 or inplanes != planes:
            self.downsample = nn.Sequential(nn.Conv2d(inplanes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes, eps=1e-5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn3(self.conv2(self.prelu(self.bn2(self.conv1(self.bn1(x))))))
        return out + (x if self.downsample is None else self.downsample(x))


class IResNet(nn.Module):
    """Four stride-2 stages (112 -> 7), then BN, flatten, Linear and BatchNorm1d to the embedding."""

    def __init__(self, layers: list[int], widths: list[int], stem: int = 64, num_features: int = 512):
        super().__init__()
        self.conv1 = nn.Conv2d(3, stem, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(stem, eps=1e-5)
        self.prelu = nn.PReLU(stem)
        inplanes = stem
        for i, (blocks, planes) in enumerate(zip(layers, widths), start=1):
            stage = [IBasicBlock(inplanes, planes, 2)] + [IBasicBlock(planes, planes, 1) for _ in range(blocks - 1)]
            setattr(self, f"layer{i}", nn.Sequential(*stage))
            inplanes = planes
        self.bn2 = nn.BatchNorm2d(inplanes, eps=1e-5)
        self.dropout = nn.Dropout(0.0)
        self.fc = nn.Linear(inplanes * (FACE_SIZE // 16) ** 2, num_features)
        self.features = nn.BatchNorm1d(num_features, eps=1e-5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.prelu(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.features(self.fc(self.dropout(torch.flatten(self.bn2(x), 1))))

    @classmethod
    def from_state_dict(cls, state: dict[str, torch.Tensor]) -> IResNet:
        layers = [len({m.group(1) for k in state if (m := re.match(rf"layer{i}\.(\d+)\.", k))}) for i in range(1, 5)]
        widths = [state[f"layer{i}.0.conv1.weight"].shape[0] for i in range(1, 5)]
        model = cls(layers, widths, stem=state["conv1.weight"].shape[0], num_features=state["fc.weight"].shape[0])
        # ms1mv3_arcface_r100_fp16.pth is stored in fp32 (fp16 names its mixed-precision training); half copies load too.
        model.load_state_dict({k: v.float() for k, v in state.items()})
        return model.eval()


class FaceEmbedder:
    def __init__(self, model: IResNet):
        self.model = model.eval()

    @classmethod
    def from_pretrained(cls, ref: str, filename: str) -> FaceEmbedder:
        state = torch.load(resolve_file(ref, filename), map_location="cpu", weights_only=True)
        return cls(IResNet.from_state_dict(state))

    @torch.inference_mode()
    def embed(self, faces: list[np.ndarray]) -> torch.Tensor:
        """RGB uint8 face crops of any size -> (n, d) L2-normalised embeddings."""
        pixels = np.stack([cv2.resize(f, (FACE_SIZE, FACE_SIZE), interpolation=cv2.INTER_AREA) for f in faces])
        x = (torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 127.5 - 1.0).to(self.model.fc.weight.device)
        features = self.model(x)
        return features / features.norm(dim=-1, keepdim=True)
