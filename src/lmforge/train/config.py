"""The training config: one YAML file (plus ``key=value`` overrides) describes a whole run.

The loop's settings (batching, steps, evaluation, checkpoints, precision, parallelism) are the same for
every objective; ``objective`` names what is trained (``causal_lm`` on token shards by default), and
``model.arch`` names the model family, so a config for one family can never build another.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from lmforge.config import ConfigError
from lmforge.models.bert import BertConfig
from lmforge.models.gpt import GPTConfig
from lmforge.models.seq2seq import Seq2SeqConfig
from lmforge.models.task import TEXT_FIELDS, TaskConfig


@dataclass
class DataConfig:
    """Where the causal-LM objective reads its tokens."""

    shards: str = ""  # a folder written by `lmforge shards`
    seq_len: int = 256  # tokens per training window (<= model.max_seq_len)


@dataclass
class OptimConfig:
    """AdamW with linear warmup then cosine decay to ``min_lr``."""

    lr: float = 6e-4
    min_lr: float | None = None  # default lr / 10
    weight_decay: float = 0.1  # matrices only: never norms, biases or embeddings
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
    grad_clip: float = 1.0  # max global gradient norm; 0 = off
    warmup_steps: int = 100
    decay_steps: int | None = None  # length of warmup + cosine; default max_steps
    layer_lr_decay: float = 1.0  # block i of L trains at lr·decay^(L−i), the embeddings at lr·decay^(L+1)
    freeze_layers: int = 0  # freeze the embeddings and the lowest N blocks; -1: all of the backbone

    def __post_init__(self) -> None:
        if not 0 < self.layer_lr_decay <= 1 or self.freeze_layers < -1:
            raise ConfigError("optim: need 0 < layer_lr_decay <= 1 and freeze_layers >= -1")


@dataclass
class MaskingConfig:
    """Masked-LM corruption (objective=mlm): BERT's 15 % chosen, of which 80/10/10 mask/random/keep."""

    rate: float = 0.15  # share of the window's tokens chosen for prediction
    mask: float = 0.8  # of the chosen: replaced by [MASK]
    random: float = 0.1  # of the chosen: replaced by a random token (the rest stay as they are)
    nsp: bool = False  # also next-sentence prediction: [CLS] A [SEP] B [SEP], B the true next or random

    def __post_init__(self) -> None:
        if not (0 < self.rate < 1 and self.mask >= 0 and self.random >= 0 and self.mask + self.random <= 1):
            raise ConfigError("mlm: need 0 < rate < 1, mask >= 0, random >= 0 and mask + random <= 1")


@dataclass
class FinetuneConfig:
    """What a task objective (classify, ner, qa, translate, summarize, instruct) fine-tunes on, and
    which of its models it keeps."""

    model: str = ""  # pretrained lmforge model folder (bert or gpt) to start from; "": model.backbone, random
    tokenizer: str = ""  # folder holding the tokenizer when training from scratch (default: task.model's)
    train: str = ""  # labelled examples: classify .tsv/.csv/.jsonl, ner CoNLL columns, qa SQuAD JSON
    dev: str = ""  # labelled examples scored in full at every evaluation ("": no validation)
    text_field: list[str] = field(default_factory=lambda: list(TEXT_FIELDS))  # classify: the first a file has
    label_field: str = "label"  # classify
    labels: list[str] = field(default_factory=list)  # the label set in logit order; []: the train file's
    max_len: int = 128  # tokens per example (qa: per window), special tokens included; longer texts are cut
    stride: int = 128  # qa: context tokens shared by consecutive windows of a long context
    max_answer_tokens: int = 30  # qa: longest answer span considered
    class_weights: bool = False  # weight each example's loss by n / (k · n_label): every label counts alike
    src: str = ""  # translate/summarize: the source language or field (de; dialogue), see read_pairs
    tgt: str = ""  # translate/summarize: the target language or field (en; summary)
    columns: list[str] = field(default_factory=list)  # a TSV's column names ([]: src, tgt)
    max_target_len: int = 128  # translate/summarize: target tokens, eos included; longer ones are cut
    label_smoothing: float = 0.0  # translate/summarize: the paper's 0.1 spreads that mass over the vocabulary
    vocab_size: int = 8000  # translate/summarize from scratch: the joint BPE trained on both sides
    dev_generate: bool = True  # translate/summarize: greedy-decode the dev set at every evaluation
    bleu_tokenize: str = ""  # translate: sacreBLEU's tokenizer; "": zh for a zh target, else 13a
    chat_template: str = ""  # instruct: a Jinja file; "": the model's own template, else lmforge's ChatML
    pack: bool = True  # instruct: several short conversations per row of max_len tokens (none sees another)
    monitor: str = ""  # for keep_best and early stopping; "": the objective's first (val_acc, val_f1)
    keep_best: bool = True  # export the model of the best dev evaluation (by monitor), not the last one

    def __post_init__(self) -> None:
        if self.max_len < 3:
            raise ConfigError(f"task.max_len must be at least 3, got {self.max_len}")
        if self.stride < 0 or self.max_answer_tokens < 1:
            raise ConfigError("task.stride must be >= 0 and task.max_answer_tokens positive")
        if self.max_target_len < 2 or not 0 <= self.label_smoothing < 1:
            raise ConfigError("task.max_target_len must be at least 2 and 0 <= task.label_smoothing < 1")
        if self.chat_template and not Path(self.chat_template).is_file():
            raise ConfigError(f"task.chat_template={self.chat_template}: no such file")


@dataclass
class DistillConfig:
    """Knowledge distillation (objective=distill): causal-LM training of the student on a mix of the
    hard labels and a teacher's softened next-token distribution (``losses.distillation``)."""

    teacher: str = ""  # required: the teacher's lmforge model folder (same tokenizer as the shards)
    alpha: float = 0.5  # weight of the hard-label CE; 1 - alpha that of T^2 * KL to the teacher
    temperature: float = 2.0  # T: both distributions softened by it

    def __post_init__(self) -> None:
        if not 0 <= self.alpha <= 1 or self.temperature <= 0:
            raise ConfigError("distill.alpha must be in [0, 1] and distill.temperature positive")


@dataclass
class LoRAConfig:
    """LoRA (models/lora.py): train W + (alpha/rank)·B A on the targeted linear layers, all else frozen
    except ``trainable`` (the task head always trains); rank 0 = off (full fine-tuning)."""

    rank: int = 0
    alpha: float = 16.0
    dropout: float = 0.0  # on the adapters' input path
    targets: list[str] = field(default_factory=lambda: ["attn.qkv", "attn.proj"])  # e.g. attn.qkv:q,v
    trainable: list[str] = field(default_factory=list)  # more parameters that train, e.g. pooler

    def __post_init__(self) -> None:
        if self.rank < 0 or self.alpha <= 0 or not 0 <= self.dropout < 1 or not self.targets:
            raise ConfigError("lora: need rank >= 0, alpha > 0, 0 <= dropout < 1 and some targets")


@dataclass
class TrainConfig:
    out_dir: str = "runs/pretrain"
    objective: str = "causal_lm"  # a registered objective (train/objective.py) or 'package.module:Class'
    # model.arch names the family (gpt: GPT-2/Llama decoders, bert: encoders, task: a backbone with a task
    # head); vocab_size comes from the shards' (or the task's) tokenizer
    model: GPTConfig | BertConfig | TaskConfig | Seq2SeqConfig = field(default_factory=GPTConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    mlm: MaskingConfig = field(default_factory=MaskingConfig)  # objective=mlm only
    task: FinetuneConfig = field(default_factory=FinetuneConfig)  # objective=classify, ner, qa
    lora: LoRAConfig = field(default_factory=LoRAConfig)  # rank > 0: train low-rank adapters only
    distill: DistillConfig = field(default_factory=DistillConfig)  # objective=distill only
    batch_size: int = 8  # sequences per micro-batch per process
    grad_accum: int = 1  # micro-batches per optimizer step (global batch = batch_size·grad_accum·world)
    max_steps: int = 1000
    max_minutes: float | None = None  # also stop (with a checkpoint) after this much wall time
    fit_schedule_to_time: bool = False  # with max_minutes: re-plan the lr schedule's length from the
    # measured step rate as the run goes, so the cosine ends when the time does (max_steps: upper bound)
    eval_every: int = 200
    eval_batches: int = 20  # global val batches per evaluation
    early_stop_patience: int | None = None  # stop after this many evaluations without a better val loss
    stop_at_val_loss: float | None = None  # stop once an evaluation reaches this val loss (a quality target)
    ckpt_every: int = 500
    keep_last: int = 3  # checkpoints kept on disk
    log_every: int = 10
    seed: int = 1337
    device: str = "auto"  # auto: cuda when available, else cpu
    dtype: Literal["auto", "float32", "bfloat16"] = "auto"  # auto: bf16 autocast on CUDA and AMX CPUs
    keep_heap: bool = True  # CPU (glibc): keep freed memory for the next step (train/fast.py)
    compile: bool = False  # torch.compile the forward + loss
    parallel: Literal["ddp", "fsdp"] = "ddp"  # under torchrun; FSDP shards params, grads and optimizer
    threads: int | None = None  # CPU intra-op threads (default: PyTorch's choice)
    vocab_multiple: int = 64  # pad the model's vocabulary to a multiple of this (faster matmuls)
    export: bool = True  # save the final model as an lmforge model folder in out_dir/model
    progress: bool = True

    def __post_init__(self) -> None:
        positive = [
            "batch_size",
            "grad_accum",
            "max_steps",
            "eval_every",
            "ckpt_every",
            "keep_last",
            "log_every",
        ]
        for name in (*positive, "eval_batches", "vocab_multiple"):
            if getattr(self, name) < (1 if name in positive else 0):
                raise ConfigError(f"{name} must be {'positive' if name in positive else '>= 0'}")
        if self.fit_schedule_to_time and self.max_minutes is None:
            raise ConfigError("fit_schedule_to_time needs max_minutes (the time to fit the schedule to)")
        if self.objective == "distill" and not self.distill.teacher:
            raise ConfigError("objective=distill needs distill.teacher (the teacher's model folder)")
        if self.objective in ("causal_lm", "mlm", "distill") and not isinstance(
            self.model, GPTConfig | BertConfig
        ):
            raise ConfigError(
                f"objective={self.objective} pretrains a gpt or bert model, not arch {self.model.arch}"
            )
        if self.objective in ("causal_lm", "mlm", "distill") and self.data.seq_len > self.model.max_seq_len:
            raise ConfigError(
                f"data.seq_len ({self.data.seq_len}) exceeds model.max_seq_len ({self.model.max_seq_len})"
            )
