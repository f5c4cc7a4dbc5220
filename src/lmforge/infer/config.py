"""Typed config of ``lmforge generate``: the sampling settings plus prompts, output, device and precision."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Literal

from lmforge.config import ConfigError, require
from lmforge.infer.sampling import GenerationConfig
from lmforge.models.quant import QuantSpec


@dataclass
class GenerateConfig(GenerationConfig):
    """A ``GenerationConfig`` (so its keys stay flat: ``temperature=0.8``) with what the command adds."""

    prompt: list[str] = field(default_factory=list)  # required; several run as one left-padded batch
    stream: bool = False  # print tokens as they are generated
    device: str = "auto"  # auto, cpu, cuda, cuda:1, ...
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"  # auto: bf16 on CUDA, fp32 on CPU

    def __post_init__(self) -> None:
        super().__post_init__()
        require(self, "prompt")
        if self.stream and self.num_beams > 1:
            raise ConfigError("stream=true needs num_beams=1: beam search has no final token until it ends")
        self.stop = [unescape(s) for s in self.stop]


@dataclass
class ChatConfig(GenerationConfig):
    """``lmforge chat``: the sampling settings plus the conversation's start, device and precision."""

    max_new_tokens: int = 512  # per answer (at most half the context)
    temperature: float = 0.7  # a chat's usual: varied but on topic (0: greedy)
    top_p: float = 0.9
    message: list[str] = field(default_factory=list)  # one-shot: answer these in turn, print, exit
    system: str = ""  # the system message ("": none, or the template's default)
    chat_template: str = ""  # a Jinja file in place of the model's template ("": its own, else ChatML)
    device: str = "auto"  # auto, cpu, cuda, cuda:1, ...
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"  # auto: bf16 on CUDA, fp32 on CPU

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.num_beams > 1:
            raise ConfigError("chat streams its answers: num_beams must be 1")
        self.stop = [unescape(s) for s in self.stop]


def unescape(text: str) -> str:
    r"""``\n``, ``\t`` and ``\\`` as newline, tab and backslash: a shell passes ``--stop "\n\n"`` as a
    literal backslash and n, which would never match the text."""
    return re.sub(r"\\([nt\\])", lambda m: {"n": "\n", "t": "\t", "\\": "\\"}[m[1]], text)


@dataclass
class QuantizeConfig:
    """``lmforge quantize``: weight-only quantization of a model folder (``models/quant.py``)."""

    bits: Literal[8, 4] = 8  # 8: int8 per output channel; 4: int4 per group of inputs
    group: int = 128  # int4: inputs per scale (32 finer, 128 smaller); halved where a layer needs it
    symmetric: bool = True  # int4: false gives each group a zero point: a grid over its own range, finer
    # int4 by GPTQ: a UTF-8 text whose first calibration_tokens tokens, in windows of calibration_len,
    # show each layer the inputs whose outputs its rounding should move least (decoders only)
    calibration: str | None = None
    calibration_tokens: int = 32768
    calibration_len: int = 512
    overwrite: bool = False  # replace an existing output folder (one lmforge wrote)

    def __post_init__(self) -> None:
        self.spec()  # its checks
        if self.calibration is not None and self.bits != 4:
            raise ConfigError(
                "calibration (GPTQ) is for bits=4; int8 rounds each weight to its nearest level"
            )
        if not 0 < self.calibration_len <= self.calibration_tokens:
            raise ConfigError(
                f"need 0 < calibration_len ({self.calibration_len}) <= calibration_tokens "
                f"({self.calibration_tokens}): at least one window"
            )

    def spec(self) -> QuantSpec:
        return QuantSpec(self.bits, self.group, self.symmetric)
