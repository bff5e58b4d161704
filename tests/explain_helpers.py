"""Hand-built models with known answers for the explain/evaluate tests."""

import torch
from torch import nn
from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

from aft_hf.model import ImageEncoder

SIZE, PATCH = 32, 8


def region_mask(size: int = SIZE, rows=(0, 16), cols=(0, 16)) -> torch.Tensor:
    m = torch.zeros(1, 1, size, size)
    m[..., rows[0]:rows[1], cols[0]:cols[1]] = 1
    return m


class RegionViT(ImageEncoder):
    """A one-block CLIP ViT that only sees a known region: pixels outside it are zeroed first.

    No normalisation (mean 0, std 1), zero position embeddings and zero layer-norm biases, so patch
    tokens outside the region are exactly zero at the last block's layer_norm1: every gradient map
    and Grad-CAM must put all their mass on the region.
    """

    def __init__(self, mask: torch.Tensor, seed: int = 0):
        torch.manual_seed(seed)
        cfg = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                               image_size=SIZE, patch_size=PATCH, projection_dim=16, hidden_act="quick_gelu")
        vision = CLIPVisionModelWithProjection(cfg)
        with torch.no_grad():
            vision.vision_model.embeddings.position_embedding.weight.zero_()
            vision.vision_model.pre_layrnorm.bias.zero_()
            vision.vision_model.encoder.layers[-1].layer_norm1.bias.zero_()
        super().__init__(vision, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0), normalize=True)
        self.register_buffer("region", mask, persistent=False)

    def forward(self, pixels):
        return super().forward(pixels * self.region)


class ColourEncoder(nn.Module):
    """Embedding = per-channel mean colour minus 0.5: zero-shot on colour classes has known answers."""

    def __init__(self):
        super().__init__()
        self.dummy = nn.Parameter(torch.zeros(()))  # gives the module a device and a parameter

    def forward(self, pixels):
        return pixels.mean(dim=(2, 3)) - 0.5 + 0 * self.dummy
