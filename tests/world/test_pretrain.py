"""World pretraining's contrastive loss: matched pairs score lower than shuffled ones."""

import torch

from aft_hf.world.pretrain import contrastive_loss


def test_contrastive_loss_prefers_matched_pairs():
    torch.manual_seed(0)
    emb = torch.nn.functional.normalize(torch.randn(8, 16), dim=-1)
    labels = torch.arange(8)
    scale = torch.tensor(10.0)
    matched = contrastive_loss(emb, emb, labels, scale)
    shuffled = contrastive_loss(emb, emb[torch.randperm(8)], labels, scale)
    assert matched < shuffled
