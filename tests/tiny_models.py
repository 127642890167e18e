"""Tiny randomly initialised BLIP-2 / CLIP / SigLIP checkpoints for tests.

Each is built from a config, with a word-level tokenizer and the model's own image processor
class, and saved with `save_pretrained`, so the encoders load it through exactly the code
that loads the real weights.
"""

from __future__ import annotations

from pathlib import Path

import torch

WORDS = (
    "flood fire earthquake help people trapped shelter water food rescue need urgent "
    "the a in of on is are we our city road bridge collapsed photo fake real storm "
    "please send donate volunteers hospital injured missing"
).split()
SPECIALS = ["<pad>", "<unk>", "<s>", "</s>"]  # ids 0..3
PAD, BOS, EOS = 0, 2, 3
IMAGE = 32  # px


def tiny_tokenizer(max_length: int = 32):
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(SPECIALS + list(WORDS))}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", special_tokens=[("<s>", BOS), ("</s>", EOS)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="<unk>",
        pad_token="<pad>",
        bos_token="<s>",
        eos_token="</s>",
        model_max_length=max_length,
    )


def _tower(**extra) -> dict:
    return {
        "hidden_size": 32,
        "intermediate_size": 37,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        **extra,
    }


def save_tiny_blip2(directory: Path) -> Path:
    from transformers import Blip2Config, Blip2Model, Blip2Processor, BlipImageProcessor

    config = Blip2Config(
        vision_config=_tower(image_size=IMAGE, patch_size=8),
        qformer_config=_tower(vocab_size=64, encoder_hidden_size=32),
        text_config=dict(
            model_type="opt",
            vocab_size=len(SPECIALS) + len(WORDS),
            hidden_size=24,
            word_embed_proj_dim=24,
            ffn_dim=37,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=64,
            pad_token_id=PAD,
            bos_token_id=BOS,
            eos_token_id=EOS,
        ),
        num_query_tokens=4,
    )
    torch.manual_seed(0)
    Blip2Model(config).save_pretrained(directory)
    Blip2Processor(
        image_processor=BlipImageProcessor(size={"height": IMAGE, "width": IMAGE}),
        tokenizer=tiny_tokenizer(),
        num_query_tokens=4,
    ).save_pretrained(directory)
    return directory


def save_tiny_clip(directory: Path) -> Path:
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    config = CLIPConfig(
        text_config=_tower(
            vocab_size=len(SPECIALS) + len(WORDS),
            max_position_embeddings=32,
            pad_token_id=PAD,
            bos_token_id=BOS,
            eos_token_id=EOS,
        ),
        vision_config=_tower(image_size=IMAGE, patch_size=8),
        projection_dim=16,
    )
    torch.manual_seed(0)
    CLIPModel(config).save_pretrained(directory)
    CLIPProcessor(
        image_processor=CLIPImageProcessor(
            size={"shortest_edge": IMAGE}, crop_size={"height": IMAGE, "width": IMAGE}
        ),
        tokenizer=tiny_tokenizer(),
    ).save_pretrained(directory)
    return directory


def save_tiny_siglip(directory: Path) -> Path:
    from transformers import SiglipConfig, SiglipImageProcessor, SiglipModel, SiglipProcessor

    config = SiglipConfig(
        text_config=_tower(
            vocab_size=len(SPECIALS) + len(WORDS),
            max_position_embeddings=16,
            pad_token_id=PAD,
            bos_token_id=BOS,
            eos_token_id=EOS,
        ),
        vision_config=_tower(image_size=IMAGE, patch_size=8, hidden_size=40),
    )
    torch.manual_seed(0)
    SiglipModel(config).save_pretrained(directory)
    SiglipProcessor(
        image_processor=SiglipImageProcessor(size={"height": IMAGE, "width": IMAGE}),
        tokenizer=tiny_tokenizer(16),
    ).save_pretrained(directory)
    return directory
