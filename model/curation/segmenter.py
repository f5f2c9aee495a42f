"""Box-prompted masks with Segment Anything (the `segment-anything` package and its checkpoints).

The official checkpoints are plain state dicts without a config, so the architecture comes from
`model_type` (the sizes of segment_anything's own builders) and the weights from
`torch.load(weights_only=True)`. `tiny` is a small encoder of the same classes for tests.
"""

from __future__ import annotations

from functools import partial

import numpy as np
import torch
from segment_anything import SamPredictor
from segment_anything.utils.transforms import ResizeLongestSide
from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

from model.curation.device import tensor
from model.hub import resolve_file

# model_type -> (embed_dim, depth, heads, global attention blocks, input size); as build_sam.py
ENCODERS = {
    "vit_h": (1280, 32, 16, (7, 15, 23, 31), 1024),
    "vit_l": (1024, 24, 16, (5, 11, 17, 23), 1024),
    "vit_b": (768, 12, 12, (2, 5, 8, 11), 1024),
    "tiny": (32, 2, 2, (1,), 256),
}


def build_sam(model_type: str) -> Sam:
    """An uninitialised Sam of one size, laid out exactly as `segment_anything.build_sam` does."""
    embed_dim, depth, heads, global_attn, image_size = ENCODERS[model_type]
    prompt_dim, patch = 256, 16
    grid = image_size // patch
    return Sam(
        image_encoder=ImageEncoderViT(
            depth=depth,
            embed_dim=embed_dim,
            img_size=image_size,
            mlp_ratio=4,
            norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
            num_heads=heads,
            patch_size=patch,
            qkv_bias=True,
            use_rel_pos=True,
            global_attn_indexes=list(global_attn),
            window_size=14,
            out_chans=prompt_dim,
        ),
        prompt_encoder=PromptEncoder(
            embed_dim=prompt_dim, image_embedding_size=(grid, grid), input_image_size=(image_size, image_size), mask_in_chans=16
        ),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=3,
            transformer=TwoWayTransformer(depth=2, embedding_dim=prompt_dim, mlp_dim=2048, num_heads=8),
            transformer_dim=prompt_dim,
            iou_head_depth=3,
            iou_head_hidden_dim=256,
        ),
        pixel_mean=[123.675, 116.28, 103.53],
        pixel_std=[58.395, 57.12, 57.375],
    )


def sam_input(image: np.ndarray, model_type: str) -> np.ndarray:
    """The CPU part of segmentation: the RGB frame resized so its long side is the encoder's input
    (1024 for the real models), with `SamPredictor.set_image`'s own transform; model-free."""
    return ResizeLongestSide(ENCODERS[model_type][4]).apply_image(image)


class Segmenter:
    """A frame resized by `sam_input` + boxes -> one binary mask and SAM's predicted IoU per box (tensor work only)."""

    def __init__(self, sam: Sam):
        self.predictor = SamPredictor(sam.eval())
        self.dtype = torch.float32

    @classmethod
    def from_pretrained(cls, ref: str, checkpoint: str, model_type: str) -> Segmenter:
        sam = build_sam(model_type)
        sam.load_state_dict(torch.load(resolve_file(ref, checkpoint), map_location="cpu", weights_only=True))
        return cls(sam)

    def to(self, device: str, dtype: torch.dtype = torch.float32) -> Segmenter:
        """On `device`, computing in `dtype` by autocast: segment_anything casts box coordinates to fp32
        itself, so its weights stay fp32 (375 MB for ViT-B) and autocast runs the matmuls in bf16."""
        self.predictor.model.to(device)
        self.dtype = dtype
        return self

    def autocast(self):
        return torch.autocast(self.predictor.device.type, dtype=self.dtype, enabled=self.dtype != torch.float32)

    @torch.inference_mode()
    def masks(self, resized: np.ndarray, original_size: tuple[int, int], boxes: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """(n, h, w) bool masks at the original size and (n,) predicted IoU for (n, 4) xyxy boxes in original pixels,
        computed as `SamPredictor.set_image` and `predict_torch` do; tensors on the model's device."""
        predictor = self.predictor
        if len(boxes) == 0:
            return torch.zeros((0, *original_size), dtype=torch.bool, device=predictor.device), torch.zeros(0, device=predictor.device)
        image = tensor(resized).to(predictor.device).permute(2, 0, 1).contiguous()[None]
        transformed = predictor.transform.apply_boxes_torch(torch.as_tensor(boxes, dtype=torch.float32, device=predictor.device), original_size)
        with self.autocast():
            predictor.set_torch_image(image, tuple(original_size))
            masks, iou, _ = predictor.predict_torch(None, None, boxes=transformed, multimask_output=False)
        return masks[:, 0], iou[:, 0].float()
