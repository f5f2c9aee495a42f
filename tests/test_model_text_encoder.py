"""model/train/text_encoder.py loads CogVideoX's T5 tokenizer as published: sentencepiece files, no tokenizer.json.

THUDM/zai-org CogVideoX-{2b,5b}/tokenizer/ holds spiece.model, tokenizer_config.json,
special_tokens_map.json and added_tokens.json only; transformers builds the fast tokenizer from
spiece.model, which needs the `sentencepiece` and `protobuf` packages. The tiny checkpoints ship a
tokenizer.json, so only this test reaches that path.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
import torch
from model_fixtures import one_thread  # noqa: F401  (fixture)

from model.train.text_encoder import T5TargetEncoder

pytestmark = pytest.mark.usefixtures("one_thread")

CORPUS = [
    "a man walks a dog in the park",
    "two women talk at a table",
    "a red car drives down the street at night",
    "the camera pans across a mountain lake",
    "a child plays with a ball",
]
EXTRA_IDS = 100  # CogVideoX's tokenizer_config.json: <extra_id_0> .. <extra_id_99>


def sentencepiece_model(vocab_size: int = 40) -> bytes:
    import sentencepiece

    model = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(CORPUS * 20),
        model_writer=model,
        vocab_size=vocab_size,
        model_type="unigram",
        pad_id=0, eos_id=1, unk_id=2, bos_id=-1,  # T5's ids
        pad_piece="<pad>", eos_piece="</s>", unk_piece="<unk>",
        num_threads=1,
        minloglevel=2,
    )
    return model.getvalue()


def write_sentencepiece_layout(folder: Path, spiece: bytes, vocab_size: int) -> None:
    """The four files of CogVideoX's tokenizer/ folder, with its keys."""
    folder.mkdir(parents=True)
    (folder / "spiece.model").write_bytes(spiece)
    extra = [f"<extra_id_{i}>" for i in range(EXTRA_IDS)]
    special = {"eos_token": "</s>", "pad_token": "<pad>", "unk_token": "<unk>", "additional_special_tokens": extra}
    config = special | {"tokenizer_class": "T5Tokenizer", "extra_ids": EXTRA_IDS, "legacy": True, "model_max_length": 226}
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    (folder / "special_tokens_map.json").write_text(json.dumps(special))
    added = {token: vocab_size + EXTRA_IDS - 1 - i for i, token in enumerate(extra)}  # T5 numbers them from the end
    (folder / "added_tokens.json").write_text(json.dumps(added))


def tiny_t5_encoder(vocab_size: int):
    from transformers import T5Config, T5EncoderModel

    torch.manual_seed(0)
    config = T5Config(vocab_size=vocab_size, d_model=16, d_kv=4, d_ff=32, num_layers=1, num_heads=2, feed_forward_proj="gated-gelu")
    return T5EncoderModel(config)


def test_cogvideox_sentencepiece_tokenizer_loads_and_tokenizes(tmp_path):
    import sentencepiece

    spiece = sentencepiece_model()
    vocab_size = 40
    write_sentencepiece_layout(tmp_path / "tokenizer", spiece, vocab_size)
    tiny_t5_encoder(vocab_size + EXTRA_IDS).save_pretrained(tmp_path / "text_encoder")
    assert not (tmp_path / "tokenizer" / "tokenizer.json").exists()

    encoder = T5TargetEncoder.from_pretrained(str(tmp_path))

    captions = ["a man walks a dog", "a child plays"]
    reference = sentencepiece.SentencePieceProcessor(model_proto=spiece)
    for caption in captions:
        assert encoder.tokenizer(caption).input_ids == reference.encode(caption) + [reference.eos_id()]
    assert encoder.tokenizer.convert_tokens_to_ids("<extra_id_0>") == vocab_size + EXTRA_IDS - 1
    with torch.no_grad():
        features, mask = encoder(captions)
    assert features.shape == (2, 226, 16)
    assert mask.sum(1).tolist() == [len(reference.encode(caption)) + 1 for caption in captions]
