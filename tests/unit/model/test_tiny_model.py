"""The offline tiny LLaVA-NeXT: loads like the real one, exact tokenizer round-trips, same chat format, idempotent."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image
from transformers import AutoModelForImageTextToText, AutoProcessor

from tasks.model.taxonomy import load_taxonomy
from tasks.model.tiny_model import MANIFEST_NAME, build_tiny_llava

TAXONOMIES = [load_taxonomy("digits"), load_taxonomy("hotel")]
CORPUS = [
    text
    for taxonomy in TAXONOMIES
    for text in (taxonomy.prompt(), *taxonomy.labels, *(taxonomy.answer(label) for label in taxonomy.labels))
]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return build_tiny_llava(tmp_path_factory.mktemp("tiny") / "model", CORPUS)


@pytest.fixture(scope="module")
def processor(model_dir):
    return AutoProcessor.from_pretrained(model_dir)


def conversation(prompt: str, answer: str | None = None, image_part: dict | None = None) -> list[dict]:
    user = {"role": "user", "content": [{"type": "text", "text": prompt}, image_part or {"type": "image"}]}
    return [user] if answer is None else [user, {"role": "assistant", "content": [{"type": "text", "text": answer}]}]


@pytest.mark.parametrize("taxonomy", TAXONOMIES, ids=lambda t: t.name)
def test_every_answer_and_prompt_round_trips_exactly(processor, taxonomy):
    tokenizer = processor.tokenizer
    for text in (taxonomy.prompt(), *(taxonomy.answer(label) for label in taxonomy.labels)):
        ids = tokenizer.encode(text, add_special_tokens=False)
        assert tokenizer.unk_token_id not in ids, text
        assert tokenizer.decode(ids) == text


def test_punctuation_is_split_into_its_own_tokens(processor):
    tokens = processor.tokenizer.tokenize("this is a photo of Terrace/Patio.")
    assert tokens[-4:] == ["ĠTerrace", "/", "Patio", "."]


def test_special_tokens_are_distinct_and_image_token_is_known(processor, model_dir):
    tokenizer = processor.tokenizer
    special = [tokenizer.pad_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.unk_token_id]
    assert len(set(special)) == 4 and None not in special
    config = json.loads((model_dir / "config.json").read_text())
    assert config["image_token_index"] == tokenizer.convert_tokens_to_ids("<image>") == processor.image_token_id


def test_chat_template_renders_image_and_image_url_parts_as_image_tokens(processor):
    prompt = TAXONOMIES[0].prompt()
    as_image = processor.apply_chat_template(conversation(prompt), add_generation_prompt=True, tokenize=False)
    url_part = {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}
    as_url = processor.apply_chat_template(
        conversation(prompt, image_part=url_part), add_generation_prompt=True, tokenize=False
    )
    assert as_image == as_url == f"<s>[INST] <image>\n{prompt} [/INST]"


def test_assistant_mask_covers_exactly_the_answer_and_end_of_turn(processor):
    answer = TAXONOMIES[1].answer("Terrace/Patio")
    image = Image.new("RGB", (32, 32), "white")
    messages = conversation(TAXONOMIES[1].prompt(), answer, {"type": "image", "image": image})
    out = processor.apply_chat_template(
        messages, tokenize=True, return_dict=True, return_tensors="pt", return_assistant_tokens_mask=True
    )
    masked_ids = out["input_ids"][0][out["assistant_masks"][0].bool()]
    assert processor.tokenizer.decode(masked_ids) == " " + answer + "</s>"


@pytest.mark.parametrize("size", [(32, 32), (64, 32), (50, 20)])
def test_model_forward_and_generate_accept_any_image_shape(model_dir, processor, size):
    model = AutoModelForImageTextToText.from_pretrained(model_dir)
    image = Image.new("RGB", size, "gray")
    messages = conversation(TAXONOMIES[0].prompt(), TAXONOMIES[0].answer("3"), {"type": "image", "image": image})
    inputs = processor.apply_chat_template(messages, tokenize=True, return_dict=True, return_tensors="pt")
    with torch.no_grad():
        loss = model(**inputs, labels=inputs["input_ids"]).loss
        generated = model.generate(**inputs, max_new_tokens=3, do_sample=False)
    assert torch.isfinite(loss)
    assert generated.shape[1] > inputs["input_ids"].shape[1]


def test_rebuild_with_same_corpus_and_seed_is_skipped(model_dir):
    weights = model_dir / "model.safetensors"
    before = weights.stat().st_mtime_ns
    assert build_tiny_llava(model_dir, list(reversed(CORPUS)) + CORPUS[:3]) == model_dir  # order and repeats ignored
    assert weights.stat().st_mtime_ns == before


def test_rebuild_with_another_corpus_or_seed_replaces_the_model(tmp_path):
    out = tmp_path / "model"
    build_tiny_llava(out, ["this is a photo of 1."])
    first = json.loads((out / MANIFEST_NAME).read_text())
    build_tiny_llava(out, ["this is a photo of 1.", "this is a photo of 2."])
    second = json.loads((out / MANIFEST_NAME).read_text())
    build_tiny_llava(out, ["this is a photo of 1.", "this is a photo of 2."], seed=1)
    third = json.loads((out / MANIFEST_NAME).read_text())
    assert len({first["sha256"], second["sha256"], third["sha256"]}) == 3
    tokenizer = AutoProcessor.from_pretrained(out).tokenizer
    ids = tokenizer.encode("this is a photo of 2.", add_special_tokens=False)
    assert tokenizer.decode(ids) == "this is a photo of 2."
    assert not list(tmp_path.glob(".*building*"))  # no staging directory left behind
