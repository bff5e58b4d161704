"""The one open_clip key map: to open_clip and back is the identity, q/k/v fused in order."""

import torch

from aft_hf.openclip.keymap import vision_from_open_clip, vision_to_open_clip


def test_vision_round_trip_is_the_identity_and_fuses_qkv_in_order():
    from transformers import CLIPVisionModelWithProjection

    from aft_hf.model import tiny_clip_config

    torch.manual_seed(0)
    state = CLIPVisionModelWithProjection(tiny_clip_config().vision_config).state_dict()
    state = {k: v for k, v in state.items() if not k.endswith("position_ids")}
    layers = 2
    oc = vision_to_open_clip(state, layers)
    q = state["vision_model.encoder.layers.0.self_attn.q_proj.weight"]
    assert torch.equal(oc["transformer.resblocks.0.attn.in_proj_weight"][: q.shape[0]], q)
    assert torch.equal(oc["proj"], state["visual_projection.weight"].t())
    back = vision_from_open_clip(oc, layers)
    assert set(back) == set(state) and all(torch.equal(back[k], state[k]) for k in state)
