"""Tiny random Llama/LLaVA parts shared by the graft tests (tests/test_graft.py, tests/test_model_siglip.py)."""

from safetensors import safe_open
from transformers import LlamaConfig

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
