"""The offline tiny LLaVA-NeXT that stands in for `llava-hf/llava-v1.6-mistral-7b-hf` in local runs.

Same architecture, processor and chat format as production, shrunk until it trains on 2 CPU cores in minutes and
needs no download: random weights, and a word-level vocabulary made from exactly the texts it will see.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
from collections.abc import Sequence
from pathlib import Path

from tasks.model.vision_tokens import TINY_GEOMETRY, VisionGeometry

MANIFEST_NAME = "tiny_build_manifest.json"
BUILD_VERSION = 2  # bump when the architecture or tokenizer recipe changes, so old builds are rebuilt

IMAGE_TOKEN = "<image>"
SPECIAL_TOKENS = {"pad_token": "<pad>", "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}

# Mistral's LLaVA-NeXT format ("[INST] <image>\nprompt [/INST] answer</s>") with two changes: the assistant turn
# sits in {% generation %} (assistant-only loss), and `image_url` parts become <image> too (chat servers may
# pass them as they are).
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{%- for message in messages -%}"
    "{%- set parts = [{'type': 'text', 'text': message['content']}] if message['content'] is string"
    " else message['content'] -%}"
    "{%- if message['role'] == 'user' -%}"
    "{{ '[INST] ' }}"
    "{%- for part in parts if part['type'] in ('image', 'image_url') -%}{{ '<image>\n' }}{%- endfor -%}"
    "{%- for part in parts if part['type'] == 'text' -%}{{ part['text'] }}{%- endfor -%}"
    "{{ ' [/INST]' }}"
    "{%- elif message['role'] == 'assistant' -%}"
    "{% generation %}"
    "{%- for part in parts if part['type'] == 'text' -%}{{ ' ' + part['text'] }}{%- endfor -%}"
    "{{ eos_token }}"
    "{% endgeneration %}"
    "{%- else -%}{{ raise_exception('Only user and assistant roles are supported') }}"
    "{%- endif -%}"
    "{%- endfor -%}"
)
# Words the template adds around the corpus texts; the vocabulary must know them too.
TEMPLATE_TEXTS = ("[INST] ", "\n", " [/INST]")


def build_manifest(corpus: Sequence[str], seed: int) -> dict:
    """What a build depends on; its hash tells whether an existing build can be reused."""
    texts = sorted(set(corpus))
    digest = hashlib.sha256(json.dumps([BUILD_VERSION, seed, texts]).encode("utf-8")).hexdigest()
    return {"build_version": BUILD_VERSION, "seed": seed, "num_texts": len(texts), "sha256": digest}


def build_tiny_llava(out_dir: Path, corpus: Sequence[str], *, seed: int = 0) -> Path:
    """Build and save (model + processor) a tiny random LLaVA-NeXT whose vocabulary covers `corpus`.

    Idempotent: a complete build from the same corpus and seed is reused. A new build is written next to `out_dir`
    and moved into place only when complete, so an interrupted build never looks finished.
    """
    out_dir = Path(out_dir)
    manifest = build_manifest(corpus, seed)
    if _read_manifest(out_dir) == manifest:
        return out_dir

    staging = out_dir.with_name(f".{out_dir.name}.building-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    processor = build_processor(corpus)
    _save_in_hub_layout(_build_model(processor.tokenizer, seed), staging)
    processor.save_pretrained(staging)
    (staging / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")

    shutil.rmtree(out_dir, ignore_errors=True)
    staging.rename(out_dir)
    return out_dir


def _save_in_hub_layout(model, out_dir: Path) -> None:
    """Save with the weight names of llava-hf checkpoints (`vision_tower.vision_model.*`).

    transformers 5 writes a model built from scratch without the `vision_model` level; the real checkpoint has it.
    Matching it sends local runs through the same load/save key conversions as production.
    """
    from safetensors.torch import load_file, save_file

    model.save_pretrained(out_dir)
    weights = out_dir / "model.safetensors"
    hub_name = re.compile(r"^vision_tower\.(?!vision_model\.)")
    tensors = {hub_name.sub("vision_tower.vision_model.", name): t for name, t in load_file(weights).items()}
    save_file(tensors, weights, metadata={"format": "pt"})


def _read_manifest(out_dir: Path) -> dict | None:
    path = out_dir / MANIFEST_NAME
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def _build_tokenizer(corpus: Sequence[str]):
    """A word-level tokenizer over the words of `corpus`, with exact round-trips.

    Byte-level pre-tokenisation splits punctuation into its own tokens ("Terrace", "/", "Patio", ".") and keeps each
    word's leading space inside the token, so decode(encode(text)) == text for any text made of known words.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.WordLevel(unk_token=SPECIAL_TOKENS["unk_token"]))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tokenizer.decoder = decoders.ByteLevel()
    texts = sorted(set(corpus))
    # The template puts a space before the answer ("Ġthis"); the prompt follows a newline and texts may stand alone
    # ("this"): learn both forms of every word.
    training_texts = [*TEMPLATE_TEXTS, *texts, *(" " + text for text in texts)]
    trainer = trainers.WordLevelTrainer(special_tokens=[*SPECIAL_TOKENS.values(), IMAGE_TOKEN])
    tokenizer.train_from_iterator(training_texts, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        extra_special_tokens={"image_token": IMAGE_TOKEN},
        model_max_length=1024,
        **SPECIAL_TOKENS,
    )


def build_processor(corpus: Sequence[str], geometry: VisionGeometry = TINY_GEOMETRY):
    """A LLaVA-NeXT processor for `geometry` (the tiny model's by default) over the vocabulary of `corpus`."""
    from transformers import LlavaNextProcessor
    from transformers.models.llava_next.image_processing_pil_llava_next import LlavaNextImageProcessorPil

    tile = geometry.tile_size
    image_processor = LlavaNextImageProcessorPil(
        size={"shortest_edge": tile},
        crop_size={"height": tile, "width": tile},
        image_grid_pinpoints=[list(pin) for pin in geometry.grid_pinpoints],
    )
    return LlavaNextProcessor(
        image_processor=image_processor,
        tokenizer=_build_tokenizer(corpus),
        patch_size=geometry.patch_size,
        vision_feature_select_strategy=geometry.feature_select_strategy,
        num_additional_image_tokens=geometry.num_additional_image_tokens,  # CLIP's CLS token
        chat_template=CHAT_TEMPLATE,
    )


def _build_model(tokenizer, seed: int):
    import torch
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaNextConfig, LlavaNextForConditionalGeneration

    text_config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=1024,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    vision_config = CLIPVisionConfig(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        image_size=TINY_GEOMETRY.tile_size,
        patch_size=TINY_GEOMETRY.patch_size,
        projection_dim=64,
    )
    config = LlavaNextConfig(
        text_config=text_config,
        vision_config=vision_config,
        image_token_index=tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
        image_grid_pinpoints=[list(pin) for pin in TINY_GEOMETRY.grid_pinpoints],
        vision_feature_select_strategy="default",
        vision_feature_layer=-1,  # production uses -2 of 24 layers; with 2 layers -2 would leave one unused
    )
    torch.manual_seed(seed)
    model = LlavaNextForConditionalGeneration(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    return model


def main(argv: Sequence[str] | None = None) -> None:
    """`python -m tasks.model.tiny_model OUT_DIR --corpus-json '[...]'`: the build as the training runtime runs it."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--corpus-json", required=True, help="a JSON list of the texts the vocabulary must cover")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    print(f"tiny LLaVA-NeXT: {build_tiny_llava(args.out_dir, json.loads(args.corpus_json), seed=args.seed)}")


if __name__ == "__main__":
    main()
