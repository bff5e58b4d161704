"""A word-level tokenizer for small CLIPs built in controlled worlds (tests, the synthetic demo).

Real CLIP checkpoints ship their BPE tokenizer; tiny models built here need a tokenizer whose ids
fit their small vocabulary. Special ids: 0 pad, 1 unk, 2 bos, 3 eos (CLIP's text tower pools at
the eos id given in its config, so the config must say 3).
"""

from __future__ import annotations

from typing import Iterable

from tokenizers import Tokenizer, normalizers, pre_tokenizers, processors
from tokenizers.models import WordLevel
from transformers import PreTrainedTokenizerFast

SPECIAL_TOKENS = {"pad": "<pad>", "unk": "<unk>", "bos": "<bos>", "eos": "<eos>"}
PAD_ID, UNK_ID, BOS_ID, EOS_ID = 0, 1, 2, 3
DEFAULT_WORDS = (
    "a an the photo picture of this is in on with and or".split()
    + "red green blue yellow orange purple black white gray brown pink cyan".split()
    + "circle square triangle star cross ring diamond hexagon shape object".split()
    + "cat dog bird car plane ship truck horse deer frog fish apple tree flower person".split()
)


def build_word_tokenizer(words: Iterable[str] = DEFAULT_WORDS, model_max_length: int = 16) -> PreTrainedTokenizerFast:
    """Lower-cased, punctuation-split word tokenizer: ``<bos> words <eos>``, padded with ``<pad>``."""
    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS.values())}
    for w in words:
        vocab.setdefault(w.lower(), len(vocab))
    tok = Tokenizer(WordLevel(vocab, unk_token=SPECIAL_TOKENS["unk"]))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Whitespace(), pre_tokenizers.Punctuation()])
    bos, eos = SPECIAL_TOKENS["bos"], SPECIAL_TOKENS["eos"]
    tok.post_processor = processors.TemplateProcessing(single=f"{bos} $A {eos}", special_tokens=[(bos, BOS_ID), (eos, EOS_ID)])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, model_max_length=model_max_length, pad_token=SPECIAL_TOKENS["pad"],
        unk_token=SPECIAL_TOKENS["unk"], bos_token=bos, eos_token=eos,
    )
