"""Fine-tune LLaVA-NeXT with TRL SFT, then answer the test split by greedy generation.

This file ships alone as the SageMaker training job's source and runs in a container that has nothing else of this
repository, so it imports nothing from it. The local backend runs the very same file on the tiny model.

Inputs: a `datasets` DatasetDict (saved with `save_to_disk`) with splits train/validation/test and columns `images`
(one PIL image) and `messages` (TRL's vision conversational format); other columns (`label`, `sha256`) are carried
into the predictions, never trained on.
Outputs: the model + processor in --model_dir; eval_predictions.jsonl, label_scores.jsonl and train_summary.json in
--output_data_dir. Raw answers are written as generated: parsing them into labels is the caller's job (one parser for
the project). label_scores.jsonl holds, per row of the --score_splits, the model's probability of every label (teacher-
forced likelihood of each label's answer), from which the caller flags likely mislabels, and, when every label's
answer has its own first token after the shared words, that token's log-probability among the labels' first tokens
(`decision_logprobs`): the number serving reads under the label constraint, from which the caller fits and checks
the confidence calibration. decision_tokens.json maps each label to that token's id.

Spot-friendly: checkpoints go to --checkpoint_dir (SageMaker syncs /opt/ml/checkpoints to S3) and a restarted job
resumes from the newest complete one.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
from accelerate.utils import gather_object
from datasets import DatasetDict, load_from_disk
from transformers import AutoModelForImageTextToText, AutoProcessor, PreTrainedModel, TrainerCallback
from transformers.integrations import is_deepspeed_zero3_enabled
from transformers.trainer_pt_utils import remove_dummy_checkpoint
from transformers.utils import SAFE_WEIGHTS_INDEX_NAME, SAFE_WEIGHTS_NAME, WEIGHTS_NAME
from trl import SFTConfig, SFTTrainer
from trl.data_utils import prepare_multimodal_messages

logger = logging.getLogger("train")

TRAIN_COLUMNS = ["images", "messages"]
PREDICTIONS_FILE = "eval_predictions.jsonl"
SCORES_FILE = "label_scores.jsonl"
DECISION_TOKENS_FILE = "decision_tokens.json"
SUMMARY_FILE = "train_summary.json"
SAGEMAKER_CHECKPOINT_DIR = "/opt/ml/checkpoints"
# On SageMaker the predictions and summary go under the model dir: /opt/ml/output/data is uploaded as one
# output.tar.gz ("How Amazon SageMaker Processes Training Output"), while OutputDataConfig.CompressionType NONE
# uploads /opt/ml/model as plain files, where the pipeline reads them from ModelArtifacts.S3ModelArtifacts.
EVALUATION_DIR = "evaluation"
BASE_MODEL_ID = "llava-hf/llava-v1.6-mistral-7b-hf"
# The base model's Hub commit (main as of the "Fixed a syntax error ... transformers>=v4.48" commit, #44): a later
# upstream commit never changes what a job trains.
BASE_MODEL_REVISION = "52320fb52229c8d942b1dcb8b63b3dc8087bc83b"
# The chat template training relies on, shipped beside this script so the Hub's current files never decide whether
# training starts: TRL's assistant-only loss swaps in its training template (with {% generation %} markers) only for
# a template it knows character for character. This file is TRL 1.16.0's trl/chat_templates/llava_next.jinja,
# copied verbatim ("Original Llava-Next chat template (as shipped by llava-hf/llava-v1.6-mistral-7b-hf)", TRL's
# chat_templates/README.md); tests/unit/training/test_shipped_script.py keeps it equal to the installed TRL's.
BASE_MODEL_CHAT_TEMPLATE = Path(__file__).with_name("llava_next_chat_template.jinja")


def str_to_bool(value: str) -> bool:
    """SageMaker passes every hyperparameter as a string, so booleans arrive as "true"/"false"."""
    lowered = str(value).strip().lower()
    if lowered in {"true", "1", "yes", "y"}:
        return True
    if lowered in {"false", "0", "no", "n"}:
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {value!r}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Every knob is a flag; defaults are the seed's production hyperparameters and SageMaker's paths."""
    env = os.environ
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model_id", default=BASE_MODEL_ID, help="Hub id or local directory")
    p.add_argument("--model_revision", default=None, help="Hub commit; default: the pinned one of the base model")
    p.add_argument(
        "--chat_template",
        default=None,
        help="Jinja file set on the processor; default: the shipped one "
        "for the base model, the model's own for any other",
    )
    p.add_argument("--dataset_path", default=env.get("SM_CHANNEL_TRAIN"), help="DatasetDict saved with save_to_disk")
    p.add_argument("--model_dir", default=env.get("SM_MODEL_DIR"), help="where the final model + processor go")
    p.add_argument("--output_data_dir", default=None, help=f"default --model_dir; on SageMaker its {EVALUATION_DIR}/")
    p.add_argument("--checkpoint_dir", default=None, help=f"{SAGEMAKER_CHECKPOINT_DIR} on SageMaker")
    p.add_argument("--learning_rate", type=float, default=2e-5)
    p.add_argument("--num_train_epochs", type=float, default=20)
    p.add_argument("--max_steps", type=int, default=-1, help="stop after this many optimizer steps (-1: epochs)")
    p.add_argument("--per_device_train_batch_size", type=int, default=1)
    p.add_argument("--gradient_accumulation_steps", type=int, default=1)
    p.add_argument("--warmup_ratio", type=float, default=0.03)
    p.add_argument("--weight_decay", type=float, default=0.0)
    p.add_argument("--lr_scheduler_type", default="linear")
    p.add_argument("--bf16", type=str_to_bool, default=True, help="false on CPU: bf16 there is >2x slower")
    p.add_argument("--gradient_checkpointing", type=str_to_bool, default=True)
    # Loss on the answer only: on the tiny digits model 96% held-out accuracy vs 82% for the full sequence.
    p.add_argument("--assistant_only_loss", type=str_to_bool, default=True, help="false: loss on every token")
    p.add_argument("--save_steps", type=int, default=100)
    p.add_argument("--save_total_limit", type=int, default=2, help="checkpoints kept; each holds optimizer state")
    p.add_argument("--logging_steps", type=int, default=10)
    p.add_argument("--eval_strategy", choices=["no", "epoch"], default="epoch", help="validation loss")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--eval_batch_size", type=int, default=8, help="test-split generation batch per process")
    p.add_argument("--max_new_tokens", type=int, default=16)
    p.add_argument("--label_column", default="label", help="copied into predictions when the test split has it")
    p.add_argument(
        "--score_splits",
        default="train,validation,test",
        help="splits whose every label is scored, for mislabel flags and calibration (comma-separated; empty: none)",
    )
    p.add_argument(
        "--score_batch_size",
        type=int,
        default=None,
        help="label-scoring batch (images) per process; default --eval_batch_size",
    )
    args = p.parse_args(argv)

    if not args.dataset_path or not args.model_dir:
        p.error("--dataset_path and --model_dir are required outside SageMaker")
    in_model_dir = Path(args.model_dir) / EVALUATION_DIR if "SM_MODEL_DIR" in env else args.model_dir
    args.score_batch_size = args.score_batch_size or args.eval_batch_size
    args.output_data_dir = args.output_data_dir or str(in_model_dir)
    if args.model_id == BASE_MODEL_ID:
        args.model_revision = args.model_revision or BASE_MODEL_REVISION
        args.chat_template = args.chat_template or str(BASE_MODEL_CHAT_TEMPLATE)
    if args.checkpoint_dir is None:
        in_sagemaker = "SM_MODEL_DIR" in env
        local_dir = str(Path(args.output_data_dir) / "checkpoints")
        args.checkpoint_dir = SAGEMAKER_CHECKPOINT_DIR if in_sagemaker else local_dir
    return args


def newest_checkpoint(checkpoint_dir: Path) -> Path | None:
    """The newest checkpoint a restarted job can resume from.

    A checkpoint without trainer_state.json was cut short (the Trainer writes that file last), so it is skipped.
    """
    complete = [
        path
        for path in checkpoint_dir.glob("checkpoint-*")
        if re.fullmatch(r"checkpoint-\d+", path.name) and (path / "trainer_state.json").is_file()
    ]
    return max(complete, key=lambda path: int(path.name.split("-")[1]), default=None)


def load_splits(dataset_path: str) -> DatasetDict:
    splits = load_from_disk(dataset_path)
    missing = {"train", "test"} - set(splits)
    if missing:
        raise ValueError(f"{dataset_path}: missing splits {sorted(missing)}; found {sorted(splits)}")
    return splits


def build_config(args: argparse.Namespace, has_validation: bool) -> SFTConfig:
    """Built before the model is loaded: under ZeRO-3 this is what makes from_pretrained shard the weights."""
    return SFTConfig(
        output_dir=args.checkpoint_dir,
        learning_rate=args.learning_rate,
        num_train_epochs=args.num_train_epochs,
        max_steps=args.max_steps,
        per_device_train_batch_size=args.per_device_train_batch_size,
        per_device_eval_batch_size=args.per_device_train_batch_size,
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        warmup_steps=args.warmup_ratio,  # transformers 5: a value below 1 is a ratio of the total steps
        weight_decay=args.weight_decay,
        lr_scheduler_type=args.lr_scheduler_type,
        bf16=args.bf16,
        activation_checkpointing=args.gradient_checkpointing,  # transformers 5 name of gradient checkpointing
        activation_checkpointing_kwargs={"use_reentrant": False},
        assistant_only_loss=args.assistant_only_loss,
        max_length=None,  # never truncate: a cut would drop image tokens that pixel_values still expect
        save_strategy="steps",
        save_steps=args.save_steps,
        save_total_limit=args.save_total_limit,
        eval_strategy=args.eval_strategy if has_validation else "no",
        logging_steps=args.logging_steps,
        logging_first_step=True,
        disable_tqdm=True,  # one log line per logging step instead of progress bars in CloudWatch
        report_to="none",
        seed=args.seed,
        use_cpu=not torch.cuda.is_available(),  # also makes a multi-process CPU run (gloo) count its world size
        dataloader_pin_memory=torch.cuda.is_available(),
    )


def load_processor(args: argparse.Namespace) -> Any:
    processor = AutoProcessor.from_pretrained(args.model_id, revision=args.model_revision)
    if args.chat_template:
        processor.chat_template = Path(args.chat_template).read_text(encoding="utf-8")
    return processor


def load_model(model_id: str, revision: str | None, bf16: bool) -> torch.nn.Module:
    # DeepSpeed keeps fp32 master weights itself, so bf16 weights suffice; plain torch amp needs fp32 weights.
    dtype = torch.bfloat16 if bf16 and is_deepspeed_zero3_enabled() else torch.float32
    model = AutoModelForImageTextToText.from_pretrained(model_id, revision=revision, dtype=dtype)
    conversions = getattr(model, "_weight_conversions", None)
    if is_deepspeed_zero3_enabled() and conversions:
        # transformers 5.24: a ZeRO-3 load remembers every key renaming it knows, used or not, and save_pretrained
        # reverts them all, writing `language_model.model.model.*` keys that serving stacks cannot load. Keep only
        # the renamings the checkpoint used, as a plain load does (transformers/core_model_loading.py).
        model._weight_conversions = [conversion for conversion in conversions if conversion.was_used()]
    return model


class ZeroCheckpointTrainer(SFTTrainer):
    """Intermediate ZeRO-3 checkpoints without the gathered 16-bit copy of the weights, and written once; and a
    resume without DeepSpeed that restores the checkpoint's weights (see _load_from_checkpoint).

    ds_zero3.json sets stage3_gather_16bit_weights_on_model_save false, so a checkpoint is DeepSpeed's sharded
    state only (fp32 optimizer state + master weights + bf16 partition); save_final_model turns gathering on for
    the model that is served. With gathering off, transformers 5.24's save_model (trainer.py:4109-4130) catches
    accelerate's ValueError (accelerator.py:4073-4091), saves config + processor with an empty state dict, and
    calls the engine's save_checkpoint; _save_checkpoint (trainer.py:3377, 3398-3400) then calls
    _save_optimizer_and_scheduler, whose DeepSpeed branch (trainer.py:3552-3561) calls save_checkpoint again: the
    same ~106 GB twice per checkpoint. Here a checkpoint's save_model keeps the first two steps and leaves the
    sharded state to that one later call. Everything else (the final save, one process, plain DDP) is unchanged.
    """

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        engine = self.model_wrapped
        sharded_only = (
            _internal_call
            and self.is_deepspeed_enabled
            and is_deepspeed_zero3_enabled()
            and not self.args.save_only_model  # else _save_optimizer_and_scheduler does not run
            and not engine.zero_gather_16bit_weights_on_model_save()
        )
        if not sharded_only:
            return super().save_model(output_dir, _internal_call)
        output_dir = output_dir or self.args.output_dir
        self._save(output_dir, state_dict={})  # config.json + processor, as transformers' own fallback does
        remove_dummy_checkpoint(self.args.should_save, output_dir, [WEIGHTS_NAME, SAFE_WEIGHTS_NAME])
        return None

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: torch.nn.Module | None = None) -> None:
        """Resume without DeepSpeed (one process, plain DDP) from the checkpoint's weights, not the base model's.

        transformers 5.24's save_pretrained reverts the model's weight conversions (modeling_utils.py:3538-3541), so
        a LLaVA-NeXT checkpoint holds `language_model.model.*`, `vision_tower.vision_model.*` where the module has
        `model.language_model.*`, `model.vision_tower.*`. The Trainer's resume (trainer.py:1563-1564) loads that
        file with a plain `model.load_state_dict(state_dict, False)` (trainer.py:3694-3706; sharded:
        load_sharded_checkpoint, 3739-3741), applying no conversion: every key is missing or unexpected, only
        warned about, and training goes on from the base weights. Here the model class's from_pretrained reads the
        checkpoint (its own conversions) and the weights are copied into the model in place, strictly. DeepSpeed
        resumes from its engine checkpoint instead (trainer.py:1810-1813, the module's own names); FSDP and adapters
        keep transformers' path.
        """
        model = self.model if model is None else model
        checkpoint = Path(resume_from_checkpoint)
        has_weights = any((checkpoint / name).is_file() for name in (SAFE_WEIGHTS_NAME, SAFE_WEIGHTS_INDEX_NAME))
        if (
            self.is_deepspeed_enabled
            or self.is_fsdp_enabled
            or not isinstance(model, PreTrainedModel)
            or not has_weights
        ):
            return super()._load_from_checkpoint(resume_from_checkpoint, model)
        logger.info("Loading the model weights from %s", checkpoint)
        saved = type(model).from_pretrained(checkpoint, dtype=model.dtype)
        model.load_state_dict(saved.state_dict())  # strict: a key that does not match is an error, not a warning
        del saved
        return None


def save_final_model(trainer: SFTTrainer, model_dir: str) -> None:
    """The model + processor, with the 16-bit weights gathered from every ZeRO-3 shard for this save only.

    DeepSpeed reads the switch from its engine's config at each save (engine.py:1654-1655
    zero_gather_16bit_weights_on_model_save, read by accelerate's get_state_dict, accelerator.py:4074), so
    setting it here affects only this save. Every process must call this: the gather is collective.
    """
    if not (trainer.is_deepspeed_enabled and is_deepspeed_zero3_enabled()):
        trainer.save_model(model_dir)
        return
    zero = trainer.model_wrapped._config.zero_config
    was = zero.gather_16bit_weights_on_model_save
    zero.gather_16bit_weights_on_model_save = True
    try:
        trainer.save_model(model_dir)
    finally:
        zero.gather_16bit_weights_on_model_save = was


def generate_answers(trainer: SFTTrainer, processor: Any, test, args: argparse.Namespace) -> list[dict]:
    """Greedy answers for every test row, one dict per row in test order.

    Rows are split across processes; under ZeRO-3 every process must take part in every forward pass, so each gets
    the same number of rows (padding repeats the last row, dropped after gathering).
    """
    accelerator = trainer.accelerator
    model = trainer.model
    model.eval()
    rows: list[dict] = []
    with accelerator.split_between_processes(list(range(len(test))), apply_padding=True) as my_indices:
        for start in range(0, len(my_indices), args.eval_batch_size):
            indices = my_indices[start : start + args.eval_batch_size]
            batch = test.select(indices)
            prompts = [
                prepare_multimodal_messages([m for m in messages if m["role"] != "assistant"], images=images)
                for messages, images in zip(batch["messages"], batch["images"], strict=True)
            ]
            inputs = processor.apply_chat_template(
                prompts,
                add_generation_prompt=True,
                tokenize=True,
                return_dict=True,
                return_tensors="pt",
                processor_kwargs={"padding": True, "padding_side": "left", "add_special_tokens": False},
            ).to(accelerator.device)
            started = time.perf_counter()
            with torch.no_grad():
                output = model.generate(**inputs, max_new_tokens=args.max_new_tokens, do_sample=False)
            seconds = time.perf_counter() - started
            answers = processor.batch_decode(output[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
            for index, answer, row in zip(indices, answers, batch, strict=True):
                rows.append(prediction_row(index, answer.strip(), seconds / len(indices), row, args.label_column))
    by_index = {row["index"]: row for row in gather_object(rows)}
    return [by_index[index] for index in sorted(by_index)]


def label_answers(split, label_column: str) -> dict[str, str]:
    """label -> the answer the dataset trains for it (its rows' assistant text): the candidates to score."""
    answers: dict[str, str] = {}
    for label, messages in zip(split[label_column], split["messages"], strict=True):
        answers.setdefault(label, next(m for m in messages if m["role"] == "assistant")["content"][0]["text"])
    return dict(sorted(answers.items()))


def answer_suffixes(processor: Any, row: dict, texts: list[str]) -> list[list[int]]:
    """The token ids each answer adds after the prompt, as the chat template renders it: the same after every row's
    prompt (the prompt ends with the same text whatever the image), so they are tokenised once."""
    prompt = [m for m in row["messages"] if m["role"] != "assistant"]

    def ids(messages: list[dict], **kwargs: Any) -> torch.Tensor:
        conversation = [prepare_multimodal_messages(messages, images=row["images"])]
        inputs = processor.apply_chat_template(
            conversation,
            tokenize=True,
            return_dict=True,
            return_tensors="pt",
            processor_kwargs={"add_special_tokens": False},
            **kwargs,
        )
        return inputs["input_ids"][0]

    start = len(ids(prompt, add_generation_prompt=True))
    return [
        ids([*prompt, {"role": "assistant", "content": [{"type": "text", "text": t}]}])[start:].tolist() for t in texts
    ]


def split_answers(suffixes: list[list[int]]) -> tuple[list[int], list[list[int]]]:
    """The answers' shared first tokens ("this is a photo of"), and each answer's own tokens after them (the shared
    part stops where the answers first differ, or one token before the shortest answer ends)."""
    columns = enumerate(zip(*suffixes, strict=False))
    shared = next((i for i, column in columns if len(set(column)) > 1), min(map(len, suffixes)) - 1)
    return suffixes[0][:shared], [suffix[shared:] for suffix in suffixes]


def decision_tokens(labels: list[str], own: list[list[int]]) -> dict[str, int] | None:
    """label -> the first token of its own part, when those are all distinct (one token decides the answer);
    None when two labels share it, and then only the full-answer scores are written."""
    firsts = [tokens[0] for tokens in own]
    return dict(zip(labels, firsts, strict=True)) if len(set(firsts)) == len(firsts) else None


def score_labels(trainer: SFTTrainer, processor: Any, split, answers: dict[str, str], args: argparse.Namespace) -> list:
    """Per row, the probability of every label: the teacher-forced log-likelihood of each label's answer after the
    row's prompt and image, softmaxed over the labels. The prompt (with its image) and the answers' common start
    ("this is a photo of") run once per row, whose likelihood is the same for every label and cancels in the softmax;
    the cache is repeated for the labels' own few tokens. Rows are split across processes as in generate_answers
    (ZeRO-3 needs every forward on every process)."""
    accelerator = trainer.accelerator
    model = trainer.model
    model.eval()
    labels, texts = list(answers), list(answers.values())
    prefix, suffixes = split_answers(answer_suffixes(processor, split[0], texts))
    decisions = decision_tokens(labels, suffixes)
    decision_ids = torch.tensor(list(decisions.values()) if decisions else [], device=accelerator.device)
    common = torch.tensor([prefix], dtype=torch.long, device=accelerator.device)
    width = max(len(suffix) for suffix in suffixes)
    tokens = torch.tensor([suffix + [0] * (width - len(suffix)) for suffix in suffixes], device=accelerator.device)
    in_answer = torch.tensor(
        [[1] * len(suffix) + [0] * (width - len(suffix)) for suffix in suffixes], device=accelerator.device
    )
    rows: list[dict] = []
    with accelerator.split_between_processes(list(range(len(split))), apply_padding=True) as my_indices:
        for start in range(0, len(my_indices), args.score_batch_size):
            indices = my_indices[start : start + args.score_batch_size]
            batch = split.select(indices)
            prompts = [
                prepare_multimodal_messages([m for m in messages if m["role"] != "assistant"], images=images)
                for messages, images in zip(batch["messages"], batch["images"], strict=True)
            ]
            inputs = processor.apply_chat_template(
                prompts,
                add_generation_prompt=True,
                tokenize=True,
                return_dict=True,
                return_tensors="pt",
                processor_kwargs={"padding": True, "padding_side": "left", "add_special_tokens": False},
            ).to(accelerator.device)
            inputs["input_ids"] = torch.cat([inputs["input_ids"], common.expand(len(indices), -1)], 1)
            inputs["attention_mask"] = torch.cat(
                [inputs["attention_mask"], torch.ones_like(common).expand(len(indices), -1)], 1
            )
            n = len(indices) * len(texts)
            with torch.no_grad():
                prompt_out = model(**inputs, use_cache=True, logits_to_keep=1)
                cache = prompt_out.cache
                cache.batch_repeat_interleave(len(texts))  # row-major: row i, label k at i * labels + k
                mask = torch.cat(
                    [inputs["attention_mask"].repeat_interleave(len(texts), 0), in_answer.repeat(len(indices), 1)], 1
                )
                answer_out = model(input_ids=tokens.repeat(len(indices), 1), attention_mask=mask, cache=cache)
            decision = prompt_out.logits[:, -1].float()[:, decision_ids].log_softmax(-1).tolist() if decisions else None
            first = prompt_out.logits[:, -1].float().log_softmax(-1).repeat_interleave(len(texts), 0)
            likelihood = first.gather(-1, tokens[:, :1].repeat(len(indices), 1)).squeeze(-1)
            rest = answer_out.logits[:, :-1].float().log_softmax(-1)
            rest = rest.gather(-1, tokens[:, 1:].repeat(len(indices), 1).unsqueeze(-1)).squeeze(-1)
            likelihood = likelihood + (rest * in_answer[:, 1:].repeat(len(indices), 1)).sum(-1)
            probabilities = likelihood.view(n // len(texts), len(texts)).softmax(-1).tolist()
            for position, (index, row_probabilities, row) in enumerate(zip(indices, probabilities, batch, strict=True)):
                row_scores = dict(zip(labels, row_probabilities, strict=True))
                scored = score_row(index, row_scores, row, args.label_column)
                if decision is not None:
                    scored["decision_logprobs"] = {
                        k: round(v, 6) for k, v in zip(labels, decision[position], strict=True)
                    }
                rows.append(scored)
    by_index = {row["index"]: row for row in gather_object(rows)}
    return [by_index[index] for index in sorted(by_index)]


def score_splits(trainer: SFTTrainer, processor: Any, splits: DatasetDict, args: argparse.Namespace) -> tuple:
    """Label scores of the --score_splits rows (each tagged with its split), the labels' decision tokens (None when
    they collide) and the seconds they took."""
    started = time.perf_counter()
    names = [name.strip() for name in args.score_splits.split(",") if name.strip() in splits]
    answers = label_answers(splits["train"], args.label_column)
    _, own = split_answers(answer_suffixes(processor, splits["train"][0], list(answers.values())))
    decisions = decision_tokens(list(answers), own)
    scores = [
        {"split": name, **row}
        for name in names
        for row in score_labels(trainer, processor, splits[name], answers, args)
    ]
    seconds = time.perf_counter() - started
    logger.info("Scored every label for %d rows (%s) in %.1f s", len(scores), ",".join(names), seconds)
    if decisions is None:
        logger.warning("Two labels' answers start with the same token: no decision-token scores, no calibration")
    return scores, decisions, seconds


def score_row(index: int, probabilities: dict[str, float], row: dict, label_column: str) -> dict:
    return {
        "index": index,
        "sha256": row.get("sha256"),
        "label": row[label_column],
        "probabilities": {label: round(p, 6) for label, p in probabilities.items()},
    }


def prediction_row(index: int, answer: str, seconds: float, row: dict, label_column: str) -> dict:
    """`generation_seconds` is this row's share of its batch's generate() time."""
    prediction: dict[str, Any] = {"index": index}
    if "sha256" in row:
        prediction["sha256"] = row["sha256"]
    if label_column in row:
        prediction[label_column] = row[label_column]
    prediction.update(answer=answer, generation_seconds=round(seconds, 4))
    return prediction


def write_json_atomically(path: Path, text: str) -> None:
    """Readers (and SageMaker's upload) never see a half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    partial.write_text(text, encoding="utf-8")
    partial.replace(path)


def last_logged_loss(log_history: list[dict]) -> float | None:
    losses = [entry["loss"] for entry in log_history if "loss" in entry]
    return losses[-1] if losses else None


class ProgressLog(TrainerCallback):
    """A log line per logging step that says how far the run is: step n/N, epoch e/E, the loss and an ETA. The
    Trainer's own line is a loss dict with a fractional epoch, which does not say whether 2 or 20 minutes are left.
    The ETA is this process's pace since it started (a resumed run does not count the steps it inherited)."""

    def __init__(self, clock: Any = time.monotonic) -> None:
        self.clock = clock
        self.started = 0.0
        self.first_step = 0

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.started, self.first_step = self.clock(), state.global_step

    def on_log(self, args: Any, state: Any, control: Any, logs: dict | None = None, **kwargs: Any) -> None:
        if state.is_world_process_zero and logs and "loss" in logs:
            logger.info(progress_line(state, logs["loss"], self.clock() - self.started, self.first_step))


def progress_line(state: Any, loss: float, elapsed_s: float, first_step: int = 0) -> str:
    """`step 120/600 (20%) · epoch 3.00/15 · loss 0.4210 · 0:01:30 elapsed · ETA 0:06:00` from a TrainerState."""
    done = state.global_step - first_step
    eta = elapsed_s / done * (state.max_steps - state.global_step) if done > 0 else None
    percent = f" ({state.global_step / state.max_steps:.0%})" if state.max_steps else ""
    return (
        f"step {state.global_step}/{state.max_steps}{percent} · epoch {state.epoch or 0:.2f}/{state.num_train_epochs}"
        f" · loss {loss:.4f} · {_clock(elapsed_s)} elapsed · ETA {_clock(eta) if eta is not None else 'unknown'}"
    )


def _clock(seconds: float) -> str:
    return str(timedelta(seconds=round(seconds)))


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    is_main_process = int(os.environ.get("RANK", "0")) == 0  # one copy of our log lines per job, not per process
    logging.basicConfig(
        level=logging.INFO if is_main_process else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )

    splits = load_splits(args.dataset_path)
    has_validation = "validation" in splits and len(splits["validation"]) > 0
    config = build_config(args, has_validation)
    processor = load_processor(args)
    model = load_model(args.model_id, args.model_revision, args.bf16)

    trainer = ZeroCheckpointTrainer(
        model=model,
        args=config,
        train_dataset=splits["train"].select_columns(TRAIN_COLUMNS),
        eval_dataset=splits["validation"].select_columns(TRAIN_COLUMNS) if has_validation else None,
        processing_class=processor,
        callbacks=[ProgressLog()],
    )
    resume_from = newest_checkpoint(Path(args.checkpoint_dir))
    if resume_from:
        logger.info("Resuming from %s", resume_from)
    else:
        logger.info("Starting fresh: no complete checkpoint in %s", args.checkpoint_dir)
    started = time.perf_counter()
    result = trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
    train_seconds = time.perf_counter() - started
    logger.info("Trained to step %d in %.1f s", trainer.state.global_step, train_seconds)

    save_final_model(trainer, args.model_dir)

    started = time.perf_counter()
    predictions = generate_answers(trainer, processor, splits["test"], args)
    generation_seconds = time.perf_counter() - started
    logger.info("Answered %d test rows in %.1f s", len(predictions), generation_seconds)
    scores, decisions, scoring_seconds = score_splits(trainer, processor, splits, args)

    if trainer.accelerator.is_main_process:
        output_dir = Path(args.output_data_dir)
        lines = "".join(json.dumps(row) + "\n" for row in predictions)
        write_json_atomically(output_dir / PREDICTIONS_FILE, lines)
        write_json_atomically(output_dir / SCORES_FILE, "".join(json.dumps(row) + "\n" for row in scores))
        if decisions is not None:
            write_json_atomically(output_dir / DECISION_TOKENS_FILE, json.dumps(decisions, indent=2) + "\n")
        summary = {
            "train_seconds": round(train_seconds, 2),
            "global_step": trainer.state.global_step,
            "resumed_from": str(resume_from) if resume_from else None,
            "final_loss": last_logged_loss(trainer.state.log_history),
            "mean_train_loss": result.training_loss,
            "test_rows": len(predictions),
            "generation_seconds": round(generation_seconds, 2),
            "scored_rows": len(scores),
            "scoring_seconds": round(scoring_seconds, 2),
            "world_size": trainer.accelerator.num_processes,
            "args": vars(args),
        }
        write_json_atomically(output_dir / SUMMARY_FILE, json.dumps(summary, indent=2) + "\n")
    # Every process leaves the process group before it exits: a rank that exited with the group alive aborted in its
    # communication threads ("terminate called without an active exception", SIGABRT), failing a finished job.
    trainer.accelerator.wait_for_everyone()
    trainer.accelerator.end_training()


if __name__ == "__main__":
    main()
