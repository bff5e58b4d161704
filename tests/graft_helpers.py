"""Tiny random Llama/LLaVA parts shared by the graft tests (tests/test_graft.py, tests/test_model_siglip.py)."""

import torch
from safetensors import safe_open
from transformers import CLIPImageProcessorPil, CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

from aft_hf.graft import _header

VOCAB, IMAGE_TOKEN = 64, 63


def text_cfg():
    return LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                       num_key_value_heads=2, vocab_size=VOCAB, max_position_embeddings=128)


def tensors(folder):
    """name -> (tensor, raw bytes) of every tensor of a safetensors checkpoint folder."""
    out = {}
    for file in sorted(folder.glob("*.safetensors")):
        start, header = _header(file)
        data = file.read_bytes()
        with safe_open(str(file), "pt") as f:
            for name in f.keys():
                begin, end = header[name]["data_offsets"]
                out[name] = (f.get_tensor(name), data[start + begin:start + end])
    return out


def vision_cfg(image_size=48):
    return CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                            image_size=image_size, patch_size=8, hidden_act="quick_gelu")


def save_llava(path, image_size=48, dtype=torch.float32, shard=None, seed=1, **config):
    """A tiny random LLaVA (CLIP tower, Llama) saved with its processor config and a chat template."""
    torch.manual_seed(seed)
    cfg = LlavaConfig(vision_config=vision_cfg(image_size), text_config=text_cfg(), image_token_index=IMAGE_TOKEN,
                      **config)
    model = LlavaForConditionalGeneration(cfg).to(dtype)
    model.save_pretrained(path, **({"max_shard_size": shard} if shard else {}))
    CLIPImageProcessorPil(size={"shortest_edge": image_size},
                          crop_size={"height": image_size, "width": image_size}).save_pretrained(path)
    (path / "chat_template.jinja").write_text("{% for m in messages %}{{ m['content'] }}{% endfor %}")
    return path
