"""Load a trained model directory the way the serving runtime's transformers does (config, processor, weights)
and answer images greedily, run with only the runtime's transformers (+ its tokenizers, hub, safetensors) in
front of the venv.

stdin: {"model_dir": path, "rows": [{"image": png path, "prompt": text}], "max_new_tokens": n}.
stdout (last line): JSON with what was read and the answers.
"""

import json
import sys

import torch
import transformers
from PIL import Image
from transformers import AutoConfig, AutoModelForImageTextToText, AutoProcessor

request = json.load(sys.stdin)
model_dir = request["model_dir"]
config = AutoConfig.from_pretrained(model_dir)
text_config = config.text_config
rope = getattr(text_config, "rope_parameters", None) or {}
processor = AutoProcessor.from_pretrained(model_dir)
model, loading = AutoModelForImageTextToText.from_pretrained(model_dir, output_loading_info=True)
model.eval()
answers = []
for row in request["rows"]:
    messages = [{"role": "user", "content": [{"type": "text", "text": row["prompt"]}, {"type": "image"}]}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    image = Image.open(row["image"]).convert("RGB")
    inputs = processor(images=[image], text=[text], return_tensors="pt", add_special_tokens=False)
    with torch.no_grad():
        output = model.generate(**inputs, max_new_tokens=request["max_new_tokens"], do_sample=False)
    answers.append(processor.batch_decode(output[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True)[0])
print(
    json.dumps(
        {
            "transformers": transformers.__version__,
            "model_class": type(model).__name__,
            "processor_class": type(processor).__name__,
            "image_processor_class": type(processor.image_processor).__name__,
            "rope_theta": rope.get("rope_theta", getattr(text_config, "rope_theta", None)),
            "missing_keys": sorted(loading["missing_keys"]),
            "unexpected_keys": sorted(loading["unexpected_keys"]),
            "answers": [answer.strip() for answer in answers],
        }
    )
)
