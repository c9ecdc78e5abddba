"""The floor the served benchmark compares camserve with: a minimal prediction-only TorchServe handler.

No validation, no error handling beyond TorchServe's own, no maps: decode with PIL, resize, normalise,
one batched forward under ``inference_mode``, the top class as compact JSON. It reads camserve's
checkpoint layout (weights only) so both handlers serve the same weights.
"""

from __future__ import annotations

import io
import json
import os

import numpy as np
import torch
import torchvision
from PIL import Image


class MinimalHandler:
    def initialize(self, context):
        props = context.system_properties
        gpu = props.get("gpu_id")
        self.device = torch.device(f"cuda:{gpu}" if gpu is not None and torch.cuda.is_available() else "cpu")
        ckpt = torch.load(os.path.join(props["model_dir"], context.manifest["model"]["serializedFile"]),
                          map_location="cpu", weights_only=True)
        self.classes = list(ckpt["class_names"])
        self.size = int(ckpt.get("input_size") or 224)
        self.mean = torch.tensor(ckpt.get("mean") or (0.485, 0.456, 0.406)).view(1, 3, 1, 1).to(self.device)
        self.std = torch.tensor(ckpt.get("std") or (0.229, 0.224, 0.225)).view(1, 3, 1, 1).to(self.device)
        model = torchvision.models.get_model(ckpt["arch"], weights=None, num_classes=len(self.classes))
        model.load_state_dict(ckpt["state_dict"])
        self.model = model.to(self.device).eval()
        if self.device.type == "cpu":  # the cores shared by the model's workers, as camserve's handler does
            workers = int((context.model_yaml_config or {}).get("minWorkers") or 1)
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // workers))

    def handle(self, data, context):
        images = []
        for row in data:
            raw = row.get("data") or row.get("body")
            img = Image.open(io.BytesIO(raw)).convert("RGB").resize((self.size, self.size), Image.BILINEAR)
            images.append(torch.from_numpy(np.array(img)).permute(2, 0, 1))
        x = torch.stack(images).to(self.device).float().div_(255).sub_(self.mean).div_(self.std)
        with torch.inference_mode():
            probs = torch.softmax(self.model(x), dim=1).cpu()
        top = probs.max(1)
        return [json.dumps({"label": self.classes[int(i)], "probability": float(p)}, separators=(",", ":"))
                for p, i in zip(top.values, top.indices, strict=True)]


_service = MinimalHandler()


def handle(data, context):
    if not getattr(_service, "model", None):
        _service.initialize(context)
    return None if data is None else _service.handle(data, context)
