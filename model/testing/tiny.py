"""Tiny random-initialised models of the real classes, saved in the real checkpoints' folder layout.

Tests and the offline demo load them through the same `from_pretrained` calls as the full
profile, so only the weights differ. Every builder is seeded, needs no network and runs in
seconds; tokenizers are trained here on a small built-in corpus.

`BUILDERS` maps a name to a function that writes one model folder; other parts of the project
add their own entries. `python -m model.testing.tiny OUT [NAMES...]` builds them into `OUT/<name>/`.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from collections.abc import Callable, Iterable
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from model.cinema.model import CinemaConfig

SEED = 0

CORPUS = [
    "a man in a red jacket walks his dog along the beach at sunset",
    "two women talk and laugh at a kitchen table while cooking dinner",
    "a little girl rides a bicycle down a quiet street lined with trees",
    "a chef slices vegetables on a wooden board in a busy restaurant",
    "an old man plays chess with a young boy in the park",
    "a cat jumps onto the sofa and curls up next to a sleeping puppy",
    "a woman with long hair dances in the rain under a blue umbrella",
    "the camera follows a runner through a snowy forest in the morning",
    "a couple walks hand in hand through a crowded market at night",
    "a teddy bear sits on a shelf beside a small green plant",
    "Keep every subject visually consistent across all frames of the video.",
    "Take each subject's appearance from its reference image; move naturally in a coherent scene.",
    "abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ 0123456789 .,;:!?'\"()-_/&%+=",
]

QWEN_SPECIAL_TOKENS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
]

# The message layout of Qwen's own template, cut down to what the encoder and the captioner send
# (text, images, one video).
QWEN_CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif part['type'] == 'video' %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

TINY_VIDEO_SHAPE = {"frames": 9, "height": 32, "width": 48}  # 3 latent frames of 4 x 6
VAE_SPATIAL_DOWNSAMPLE = 8
# Wan2.2's VAE compresses 16x and its DiT patches 2x2: a side must be a multiple of 32.
TINY_WAN2_2_SIZE = {"height": 32, "width": 64}


def _qwen_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import Qwen2Tokenizer

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=QWEN_SPECIAL_TOKENS[:1],
        show_progress=False,
    )
    bpe.train_from_iterator(CORPUS, trainer)
    trained = json.loads(bpe.to_str())["model"]
    tokenizer = Qwen2Tokenizer(vocab=trained["vocab"], merges=[tuple(pair) for pair in trained["merges"]])
    tokenizer.add_special_tokens({"additional_special_tokens": QWEN_SPECIAL_TOKENS[1:]})
    return tokenizer


def _qwen_processor(family: str, tokenizer):
    from transformers import Qwen2_5_VLProcessor, Qwen2VLProcessor
    from transformers.models.qwen2_vl.image_processing_qwen2_vl import Qwen2VLImageProcessor
    from transformers.models.qwen2_vl.video_processing_qwen2_vl import Qwen2VLVideoProcessor

    processor_class = {"qwen2_vl": Qwen2VLProcessor, "qwen2_5_vl": Qwen2_5_VLProcessor}[family]
    # The preprocessing sizes of Qwen/Qwen2.5-VL-3B-Instruct, so tiny runs pay the real processor cost
    # (callers pass their own frame sizes; these are what a call without them gets).
    return processor_class(
        image_processor=Qwen2VLImageProcessor(min_pixels=56 * 56, max_pixels=28 * 28 * 16384),
        tokenizer=tokenizer,
        video_processor=Qwen2VLVideoProcessor(min_pixels=128 * 28 * 28, max_pixels=768 * 28 * 28, cap_pixels_per_frame=True),
        chat_template=QWEN_CHAT_TEMPLATE,
    )


def _qwen_config(family: str, tokenizer):
    from transformers import Qwen2_5_VLConfig, Qwen2VLConfig

    token_id = tokenizer.convert_tokens_to_ids
    special_ids = {
        "image_token_id": token_id("<|image_pad|>"),
        "video_token_id": token_id("<|video_pad|>"),
        "vision_start_token_id": token_id("<|vision_start|>"),
        "vision_end_token_id": token_id("<|vision_end|>"),
    }
    # Different hidden sizes per family, so code that hard-codes one fails on the other.
    hidden, mrope_section = {"qwen2_vl": (48, [2, 2, 2]), "qwen2_5_vl": (64, [2, 3, 3])}[family]
    text_config = {
        "vocab_size": len(tokenizer),
        "hidden_size": hidden,
        "intermediate_size": 2 * hidden,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 2048,
        "bos_token_id": token_id("<|endoftext|>"),
        "eos_token_id": token_id("<|im_end|>"),
        "pad_token_id": token_id("<|endoftext|>"),
        "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": mrope_section},
    }
    if family == "qwen2_vl":
        vision_config = {"depth": 2, "embed_dim": 32, "hidden_size": hidden, "mlp_ratio": 2, "num_heads": 2}
        return Qwen2VLConfig(text_config=text_config, vision_config=vision_config, **special_ids)
    vision_config = {
        "depth": 2,
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_heads": 2,
        "out_hidden_size": hidden,
        "fullatt_block_indexes": [1],
        "window_size": 56,
    }
    return Qwen2_5_VLConfig(text_config=text_config, vision_config=vision_config, **special_ids)


def build_qwen_vl(out: Path, family: str) -> None:
    """A Qwen2-VL-family chat model and its processor, as in `Qwen/Qwen2.5-VL-3B-Instruct`."""
    from transformers import Qwen2_5_VLForConditionalGeneration, Qwen2VLForConditionalGeneration

    model_class = {"qwen2_vl": Qwen2VLForConditionalGeneration, "qwen2_5_vl": Qwen2_5_VLForConditionalGeneration}
    tokenizer = _qwen_tokenizer()
    torch.manual_seed(SEED)
    model = model_class[family](_qwen_config(family, tokenizer))
    model.save_pretrained(out)
    _qwen_processor(family, tokenizer).save_pretrained(out)


def _t5_tokenizer():
    """A Unigram vocabulary counted from the corpus (the `tokenizers` Unigram trainer is not deterministic)."""
    import math
    from collections import Counter

    from transformers import T5Tokenizer

    words = Counter(f"\u2581{word}" for line in CORPUS for word in line.split())
    chars = sorted({char for line in CORPUS for char in line if not char.isspace()})
    total = sum(words.values())
    # Whole words score higher than any spelling in characters, so known words stay one token.
    pieces = [(word, math.log(count / total)) for word, count in sorted(words.items())]
    pieces += [(piece, -20.0) for char in chars for piece in (char, f"\u2581{char}")]
    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -20.0)] + list(dict(pieces).items())
    return T5Tokenizer(vocab=pieces, extra_ids=0)


def _t5_encoder(vocab_size: int, width: int):
    from transformers import T5Config, T5EncoderModel

    config = T5Config(
        vocab_size=vocab_size,
        d_model=width,
        d_kv=8,
        d_ff=2 * width,
        num_layers=2,
        num_heads=4,
        feed_forward_proj="gated-gelu",
        dropout_rate=0.0,
    )
    torch.manual_seed(SEED)
    return T5EncoderModel(config)


def _cogvideox_vae(scaling_factor: float):
    from diffusers import AutoencoderKLCogVideoX

    torch.manual_seed(SEED)
    vae = AutoencoderKLCogVideoX(
        block_out_channels=(8, 8, 16, 16),  # four levels: 8x spatial, 4x temporal, as the real VAE
        layers_per_block=1,
        norm_num_groups=4,
        latent_channels=16,
        sample_height=TINY_VIDEO_SHAPE["height"],
        sample_width=TINY_VIDEO_SHAPE["width"],
        scaling_factor=scaling_factor,
    )
    # A trained VAE's posterior is narrow; a random one's (log-variance about 0) would bury each
    # clip's latents under sampling noise of std 1. The log-variance half of the encoder's output
    # is biased to -10 (std about 0.007), so sampled latents carry their video, as trained ones do.
    with torch.no_grad():
        vae.encoder.conv_out.conv.bias[vae.config.latent_channels :] = -10.0
    return vae


def _cogvideox_transformer(text_width: int, rotary: bool, heads: int = 2, time_embed_dim: int = 16, text_length: int = 226):
    from diffusers import CogVideoXTransformer3DModel

    torch.manual_seed(SEED)
    return CogVideoXTransformer3DModel(
        num_attention_heads=heads,
        attention_head_dim=16,
        in_channels=16,
        out_channels=16,
        time_embed_dim=time_embed_dim,
        text_embed_dim=text_width,
        num_layers=2,
        sample_height=TINY_VIDEO_SHAPE["height"] // VAE_SPATIAL_DOWNSAMPLE,
        sample_width=TINY_VIDEO_SHAPE["width"] // VAE_SPATIAL_DOWNSAMPLE,
        sample_frames=TINY_VIDEO_SHAPE["frames"],
        max_text_seq_length=text_length,
        use_rotary_positional_embeddings=rotary,
    )


def _cogvideox_scheduler(snr_shift_scale: float):
    from diffusers import CogVideoXDDIMScheduler

    # The values of zai-org/CogVideoX-{2b,5b}/scheduler/scheduler_config.json (not the class defaults).
    return CogVideoXDDIMScheduler(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=True,
        steps_offset=0,
        prediction_type="v_prediction",
        timestep_spacing="trailing",
        rescale_betas_zero_snr=True,
        snr_shift_scale=snr_shift_scale,
    )


# What separates the two CogVideoX 1.0 layouts (real values from their configs).
COGVIDEOX_LAYOUTS = {
    "2b": {"rotary": False, "scaling_factor": 1.15258426, "snr_shift_scale": 3.0},
    "5b": {"rotary": True, "scaling_factor": 0.7, "snr_shift_scale": 1.0},
}


def build_cogvideox(out: Path, layout: str, **transformer_size) -> None:
    """A CogVideoX text-to-video checkpoint folder: transformer/ vae/ scheduler/ text_encoder/ tokenizer/."""
    from diffusers import CogVideoXPipeline

    spec = COGVIDEOX_LAYOUTS[layout]
    tokenizer = _t5_tokenizer()
    text_encoder = _t5_encoder(len(tokenizer), width=32)
    pipeline = CogVideoXPipeline(
        tokenizer=tokenizer,
        text_encoder=text_encoder,
        vae=_cogvideox_vae(spec["scaling_factor"]),
        transformer=_cogvideox_transformer(text_encoder.config.d_model, spec["rotary"], **transformer_size),
        scheduler=_cogvideox_scheduler(spec["snr_shift_scale"]),
    )
    pipeline.save_pretrained(out, safe_serialization=True)


# What separates the Wan layouts: Wan2.1 (1.3B, 14B) has a 4x8x8 VAE of 16 channels; Wan2.2-TI2V-5B a
# 4x16x16 VAE of 48 channels (2x2 patches in, residual blocks) and a per-token timestep (`expand_timesteps`).
WAN_LAYOUTS = {
    "2.1": {"channels": 16, "vae": {}, "flow_shift": 3.0, "expand_timesteps": False},
    "2.2": {
        "channels": 48,
        "vae": {"is_residual": True, "patch_size": 2, "in_channels": 12, "out_channels": 12, "scale_factor_spatial": 16},
        "flow_shift": 5.0,
        "expand_timesteps": True,
    },
}


def _umt5_encoder(vocab_size: int, width: int):
    from transformers import UMT5Config, UMT5EncoderModel

    config = UMT5Config(
        vocab_size=vocab_size, d_model=width, d_kv=8, d_ff=2 * width, num_layers=2, num_heads=4,
        feed_forward_proj="gated-gelu", dropout_rate=0.0,
    )  # fmt: skip
    torch.manual_seed(SEED)
    return UMT5EncoderModel(config)


def _wan_vae(channels: int, **layout):
    from diffusers import AutoencoderKLWan

    torch.manual_seed(SEED)
    vae = AutoencoderKLWan(base_dim=8, z_dim=channels, dim_mult=[1, 2, 4, 4], num_res_blocks=1, **layout)
    # A random Wan encoder's latents are mostly its biases' pattern, the same for any input (the toy
    # world's three subjects differed by 2.5% of a channel's variance, CogVideoX's tiny VAE keeps 31%):
    # with no biases they carry their video (20%), as a trained VAE's do.
    with torch.no_grad():
        for module in vae.modules():
            if isinstance(module, (torch.nn.Conv2d, torch.nn.Conv3d)) and module.bias is not None:
                module.bias.zero_()
    # Per-channel statistics of its own latents, as the real ones are of real videos' (so normalised
    # latents have about unit variance; far from mean 0 and std 1, so a missing normalisation shows).
    generator = torch.Generator().manual_seed(SEED)
    videos = torch.rand(4, 3, TINY_VIDEO_SHAPE["frames"], *TINY_WAN2_2_SIZE.values(), generator=generator) * 2 - 1
    with torch.no_grad():
        latents = vae.encode(videos).latent_dist.mode()
    vae.register_to_config(
        latents_mean=latents.mean(dim=(0, 2, 3, 4)).tolist(), latents_std=latents.std(dim=(0, 2, 3, 4)).tolist()
    )
    return vae


def _wan_transformer(
    channels: int, text_width: int, heads: int = 2, layers: int = 2, head_dim: int = 12, ffn: int = 48, freq_dim: int = 16
):
    from diffusers import WanTransformer3DModel

    torch.manual_seed(SEED)
    return WanTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=heads, attention_head_dim=head_dim, in_channels=channels,
        out_channels=channels, text_dim=text_width, freq_dim=freq_dim, ffn_dim=ffn, num_layers=layers, rope_max_seq_len=64,
    )  # fmt: skip


def _wan_scheduler(flow_shift: float):
    from diffusers import UniPCMultistepScheduler

    # The values of Wan-AI/Wan2.1-T2V-1.3B-Diffusers/scheduler/scheduler_config.json (flow_shift 5.0 for TI2V-5B).
    return UniPCMultistepScheduler(
        num_train_timesteps=1000, prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=flow_shift,
        solver_order=2, solver_type="bh2", predict_x0=True, lower_order_final=True, final_sigmas_type="zero",
        timestep_spacing="linspace",
    )  # fmt: skip


def build_wan(out: Path, layout: str, **transformer_size) -> None:
    """A Wan text-to-video checkpoint folder as the Diffusers releases: transformer/ vae/ scheduler/ text_encoder/ tokenizer/."""
    from diffusers import WanPipeline

    spec = WAN_LAYOUTS[layout]
    tokenizer = _t5_tokenizer()
    text_encoder = _umt5_encoder(len(tokenizer), width=32)
    pipeline = WanPipeline(
        tokenizer=tokenizer,
        text_encoder=text_encoder,
        vae=_wan_vae(spec["channels"], **spec["vae"]),
        transformer=_wan_transformer(spec["channels"], text_encoder.config.d_model, **transformer_size),
        scheduler=_wan_scheduler(spec["flow_shift"]),
        expand_timesteps=spec["expand_timesteps"],
    )
    pipeline.save_pretrained(out, safe_serialization=True)


def _build_clip(out: Path, context_length: int, vocab_size: int) -> None:
    """An open_clip model in its hub layout (`open_clip_config.json` + safetensors), as `timm/vit_large_patch14_clip_224.openai`.

    The two entries differ only in the text tower's vocabulary and context (see `BUILDERS`).
    """
    import open_clip
    from safetensors.torch import save_file

    model_cfg = {
        "embed_dim": 32,
        "quick_gelu": True,
        "vision_cfg": {"image_size": 224, "layers": 2, "width": 32, "head_width": 16, "patch_size": 32},
        "text_cfg": {"context_length": context_length, "vocab_size": vocab_size, "width": 32, "heads": 2, "layers": 1},
    }
    torch.manual_seed(SEED)
    model = open_clip.CLIP(**model_cfg)
    out.mkdir(parents=True, exist_ok=True)
    save_file(model.state_dict(), out / "open_clip_model.safetensors")
    preprocess = {"mean": list(open_clip.OPENAI_DATASET_MEAN), "std": list(open_clip.OPENAI_DATASET_STD)}
    (out / "open_clip_config.json").write_text(json.dumps({"model_cfg": model_cfg, "preprocess_cfg": preprocess}, indent=2))


def build_aesthetic_head(out: Path) -> None:
    """The LAION aesthetic MLP on the tiny CLIP's width, a state dict `.pth` like the published file."""
    from model.curation.aesthetic import AestheticHead

    torch.manual_seed(SEED)
    out.mkdir(parents=True, exist_ok=True)
    torch.save(AestheticHead(embed_dim=32).state_dict(), out / "aesthetic-model.pth")


# BERT's ids that GroundingDINO hard-codes (its phrase masks split the prompt at [CLS], [SEP], "." and "?").
BERT_SPECIAL_IDS = {"[PAD]": 0, "[UNK]": 100, "[CLS]": 101, "[SEP]": 102, "[MASK]": 103, ".": 1012, "?": 1029}


def bert_tokenizer():
    """A WordPiece vocabulary of the corpus with BERT's special tokens at bert-base-uncased's ids."""
    from transformers import BertTokenizerFast

    words = sorted({w.strip(".,;:!?'\"()").lower() for line in CORPUS for w in line.split()} - {""})
    letters = "abcdefghijklmnopqrstuvwxyz"
    plain = ["person", "face"] + [w for w in words if w not in ("person", "face")] + list(letters) + [f"##{c}" for c in letters]
    at = {i: t for t, i in BERT_SPECIAL_IDS.items()}
    free = (i for i in range(max(at) + 1) if i not in at)
    at.update(zip(free, plain))
    tokens = [at.get(i, f"[unused{i}]") for i in range(max(at) + 1)]
    return BertTokenizerFast(vocab={t: i for i, t in enumerate(tokens)}, do_lower_case=True)  # vocab=: see ENVIRONMENT.md


def build_grounding_dino(out: Path) -> None:
    """A GroundingDINO detector and processor, as `IDEA-Research/grounding-dino-tiny` (Swin + BERT)."""
    from transformers import (
        BertConfig,
        GroundingDinoConfig,
        GroundingDinoForObjectDetection,
        GroundingDinoImageProcessor,
        GroundingDinoProcessor,
        SwinConfig,
    )

    tokenizer = bert_tokenizer()
    backbone = SwinConfig(
        embed_dim=16, depths=[1, 1, 1, 1], num_heads=[1, 1, 2, 2], window_size=7, out_features=["stage2", "stage3", "stage4"]
    )
    text = BertConfig(
        vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64
    )
    config = GroundingDinoConfig(
        backbone_config=backbone,
        text_config=text,
        d_model=32,
        encoder_layers=1,
        decoder_layers=2,
        encoder_ffn_dim=64,
        decoder_ffn_dim=64,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        encoder_n_points=2,
        decoder_n_points=2,
        num_queries=30,
        use_timm_backbone=False,
        use_pretrained_backbone=False,
    )
    torch.manual_seed(SEED)
    GroundingDinoForObjectDetection(config).save_pretrained(out)
    # Smaller than the real 800 / 1333, which costs the tiny model about 0.5 s per (frame, label) on a CPU; the
    # CPU benchmark (bench/curation_cpu.py) measures the preprocessing at the real sizes.
    image_processor = GroundingDinoImageProcessor(size={"shortest_edge": 224, "longest_edge": 320})
    GroundingDinoProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(out)


def build_sam(out: Path) -> None:
    """segment_anything's Sam with a small image encoder, a state-dict `.pth` like the official checkpoints."""
    from model.curation.segmenter import build_sam as sam_of_type

    torch.manual_seed(SEED)
    out.mkdir(parents=True, exist_ok=True)
    torch.save(sam_of_type("tiny").state_dict(), out / "sam_tiny.pth")


def build_dino(out: Path) -> None:
    """A DINOv2 backbone and its image processor, as `facebook/dinov2-small` (the DINO-I metric's model class)."""
    from transformers import BitImageProcessor, Dinov2Config, Dinov2Model

    config = Dinov2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, mlp_ratio=2, patch_size=14, image_size=56)
    torch.manual_seed(SEED)
    Dinov2Model(config).save_pretrained(out)
    processor = BitImageProcessor(
        size={"shortest_edge": 64}, crop_size={"height": 56, "width": 56}, do_center_crop=True,
        image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225], do_convert_rgb=True,
    )  # fmt: skip
    processor.save_pretrained(out)


def build_arcface(out: Path) -> None:
    """insightface's IResNet ArcFace backbone, shallow and narrow, a state-dict `.pth` like `backbone.pth`."""
    from model.curation.face import IResNet

    torch.manual_seed(SEED)
    out.mkdir(parents=True, exist_ok=True)
    torch.save(IResNet([1, 1, 1, 1], [8, 16, 16, 32], stem=8, num_features=32).state_dict(), out / "arcface.pth")


BUILDERS: dict[str, Callable[[Path], None]] = {
    "qwen2_vl": partial(build_qwen_vl, family="qwen2_vl"),
    "qwen2_5_vl": partial(build_qwen_vl, family="qwen2_5_vl"),
    "cogvideox_2b": partial(build_cogvideox, layout="2b"),
    "cogvideox_5b": partial(build_cogvideox, layout="5b"),
    # For the toy-world proof (model/testing/toy_world.py): wider, and 16 text tokens, not 226; next to
    # 226 text tokens the 6 of a reference are too few for two narrow layers to learn in a CPU test.
    "cogvideox_toy": partial(build_cogvideox, layout="2b", heads=4, time_embed_dim=64, text_length=16),
    # The aesthetic stage's CLIP only embeds images: a small text tower is enough.
    "clip": partial(_build_clip, context_length=16, vocab_size=512),
    "aesthetic_head": build_aesthetic_head,
    "grounding_dino": build_grounding_dino,
    "sam": build_sam,
    # CLIP-T tokenizes prompts with open_clip's own tokenizer: the real BPE vocabulary and context.
    "clip_eval": partial(_build_clip, context_length=77, vocab_size=49408),
    "dino": build_dino,
    "arcface": build_arcface,
    "wan2_1": partial(build_wan, layout="2.1"),
    "wan2_2": partial(build_wan, layout="2.2"),
    # The toy-world proof on the Wan base: the CogVideoX toy's width 64, MLP 256 and time embedding 64 (text
    # stays 512 positions, in cross-attention); with width 48 and FFN 48 it told the subjects apart by 1.23x, not 1.3x.
    "wan_toy": partial(build_wan, layout="2.1", heads=4, head_dim=16, ffn=256, freq_dim=64),
}


def tiny_cinema_config(models: Path, cogvideox: str = "cogvideox_2b") -> CinemaConfig:
    """A CinemaConfig on tiny models built into `models` (the MLLM and one base folder: a CogVideoX or
    Wan one, despite the argument's name), at the tiny video size (`TINY_WAN2_2_SIZE` for wan2_2)."""
    from model.cinema.model import AlignerShape, CinemaConfig, PartRef

    size = TINY_WAN2_2_SIZE if cogvideox == "wan2_2" else TINY_VIDEO_SHAPE
    base = str(Path(models) / cogvideox)
    return CinemaConfig(
        mllm=PartRef(ref=str(Path(models) / "qwen2_5_vl")),
        vae=PartRef(ref=base, subfolder="vae"),
        transformer=PartRef(ref=base, subfolder="transformer"),
        scheduler=PartRef(ref=base, subfolder="scheduler"),
        aligner_shape=AlignerShape(num_layers=2, width=32, num_heads=4, mlp_ratio=2),
        max_pixels=56 * 56,
        height=size["height"],
        width=size["width"],
    )


def ensure(out: Path, names: Iterable[str] | None = None) -> Path:
    """Build each named model into `out/<name>/` unless it is already there; returns `out`.

    A model is built in a temporary folder and renamed into place, so an interrupted build never
    leaves a half-written folder that a later call would take for a finished one.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for name in names if names is not None else BUILDERS:
        target = out / name
        if target.exists():
            continue
        staging = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=out))
        try:
            BUILDERS[name](staging)
            staging.rename(target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m model.testing.tiny", description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="folder that receives one subfolder per model")
    parser.add_argument("names", nargs="*", help=f"models to build (default: all of {', '.join(BUILDERS)})")
    args = parser.parse_args(argv)
    unknown = sorted(set(args.names) - set(BUILDERS))
    if unknown:
        parser.error(f"unknown model(s) {', '.join(unknown)}; known: {', '.join(BUILDERS)}")
    ensure(args.out, args.names or None)
    for name in args.names or BUILDERS:
        print(args.out / name)


if __name__ == "__main__":
    main()
