"""One argument style for every stage: ``--config`` file, ``key=value`` settings and short flags, all set
the fields of the stage's config dataclass, which also drives ``--help``.

The first step of each stage's work is stubbed to raise ``WorkStarted``: a command that gets that far has
a valid config, and one that fails with a config error must fail without reaching it.
"""

from __future__ import annotations

import json
import pkgutil
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

import lmforge.config as config_module
from lmforge.cli import main
from lmforge.config import config_keys, describe_config, field_help, type_label
from lmforge.evaluate.config import PerplexityConfig
from lmforge.hf.config import ConvertConfig
from lmforge.infer.config import GenerateConfig
from lmforge.tokenizer.config import ShardsConfig, TokenizerTrainConfig
from lmforge.train.cli import DemoConfig

WORK = (
    "lmforge.tokenizer.sources.list_inputs",
    "lmforge.tokenizer.core.Tokenizer.load",
    "lmforge.models.io.load_model",
    "lmforge.evaluate.perplexity.load_for_eval",
    "lmforge.hf.convert.from_hf",
    "lmforge.hf.convert.to_hf",
    "lmforge.hf.gguf.from_gguf",
    "lmforge.train.demo.run_demo",
)


@dataclass
class Stage:
    command: list[str]  # the stage's words and positionals
    cls: type
    flags: list[str]  # every short flag of the stage, as a user types them
    values: dict  # the config fields those flags set

    @property
    def words(self) -> list[str]:
        return [w for w in self.command if w.isalpha()]


STAGES = {
    "generate": Stage(
        ["generate", "model"],
        GenerateConfig,
        shlex.split(
            "--prompt a --prompt 'b c' --max-new-tokens 7 --temperature 0.5 --top-k 3 --top-p 0.9 "
            "--repetition-penalty 1.2 --stop '\n\n' --seed 4 --stream --truncate --device cpu --dtype float32"
        ),
        {
            "prompt": ["a", "b c"],
            "max_new_tokens": 7,
            "temperature": 0.5,
            "top_k": 3,
            "top_p": 0.9,
            "repetition_penalty": 1.2,
            "stop": ["\n\n"],
            "seed": 4,
            "stream": True,
            "truncate": "left",
            "device": "cpu",
            "dtype": "float32",
        },
    ),
    "tokenizer": Stage(
        ["tokenizer", "train"],
        TokenizerTrainConfig,
        shlex.split(
            "--input a.txt b.jsonl --out tok --vocab-size 400 --kind char --special '<|sep|>' "
            "--min-frequency 3 --text-key body"
        ),
        {
            "input": ["a.txt", "b.jsonl"],
            "out": "tok",
            "vocab_size": 400,
            "kind": "char",
            "special": ["<|sep|>"],
            "min_frequency": 3,
            "text_key": "body",
        },
    ),
    "shards": Stage(
        ["shards"],
        ShardsConfig,
        shlex.split(
            "--input c.jsonl --tokenizer tok --out s --val-fraction 0.3 --workers 2 --shard-tokens 1000 "
            "--text-key body"
        ),
        {
            "input": ["c.jsonl"],
            "tokenizer": "tok",
            "out": "s",
            "val_fraction": 0.3,
            "workers": 2,
            "shard_tokens": 1000,
            "text_key": "body",
        },
    ),
    "eval": Stage(
        ["eval", "perplexity", "runs/x"],
        PerplexityConfig,
        shlex.split("--data shards --split train --seq-len 16 --batch-size 2 --max-tokens 100 --device cpu"),
        {
            "data": "shards",
            "split": "train",
            "seq_len": 16,
            "batch_size": 2,
            "max_tokens": 100,
            "device": "cpu",
        },
    ),
    "convert": Stage(["convert", "out"], ConvertConfig, ["--from-hf", "hf"], {"from_hf": "hf"}),
    "demo": Stage(
        ["demo"],
        DemoConfig,
        ["--minutes", "0.5", "--out", "d", "--seed", "3"],
        {"minutes": 0.5, "out": "d", "seed": 3},
    ),
}


class WorkStarted(Exception):
    """The stubbed first step of a stage's work was reached."""


@pytest.fixture
def loaded(monkeypatch) -> list:
    """Configs the command loaded (in order); each stage's first step of work raises WorkStarted."""
    configs: list = []
    real = config_module.load_config

    def spy(cls, *args, **kwargs):
        configs.append(real(cls, *args, **kwargs))
        return configs[-1]

    def work(*args, **kwargs):
        raise WorkStarted(*args, *kwargs.values())

    monkeypatch.setattr(config_module, "load_config", spy)
    for target in WORK:  # import every module first: one imported under a stub would keep it for good
        pkgutil.resolve_name(target)
    for target in WORK:
        monkeypatch.setattr(target, work)
    return configs


def run_until_work(argv: list[str], configs: list, cls: type):
    """Run ``argv`` up to its first step of work: the ``cls`` config it built, and that step's args."""
    with pytest.raises(WorkStarted) as started:
        main(argv)
    return next(c for c in reversed(configs) if type(c) is cls), started.value.args


@pytest.mark.parametrize("name", STAGES)
def test_flags_key_values_and_config_file_set_the_same_fields(name, loaded, tmp_path):
    stage = STAGES[name]
    preset = tmp_path / "preset.yaml"
    preset.write_text(yaml.safe_dump(stage.values), encoding="utf-8")
    key_values = [f"{k}={json.dumps(v)}" for k, v in stage.values.items()]
    expected = stage.cls(**stage.values)
    for style in (stage.flags, key_values, ["--config", str(preset)]):
        cfg, _ = run_until_work([*stage.command, *style], loaded, stage.cls)
        assert cfg == expected, style


def test_precedence_file_then_key_value_then_flag(loaded, tmp_path):
    preset = tmp_path / "sampling.yaml"
    preset.write_text("prompt: [x]\ntemperature: 0.1\ntop_k: 5\n", encoding="utf-8")
    base = ["generate", "m", "--config", str(preset)]
    assert run_until_work(base, loaded, GenerateConfig)[0].temperature == 0.1
    cfg, _ = run_until_work([*base, "temperature=0.3"], loaded, GenerateConfig)
    assert (cfg.temperature, cfg.top_k) == (0.3, 5)
    cfg, _ = run_until_work([*base, "--temperature", "0.7", "temperature=0.3"], loaded, GenerateConfig)
    assert (cfg.temperature, cfg.top_k) == (0.7, 5)


def test_key_values_may_follow_flags(loaded):
    argv = ["generate", "m", "top_p=0.5", "--prompt", "x", "temperature=0", "--stream", "top_k=2"]
    cfg, _ = run_until_work(argv, loaded, GenerateConfig)
    assert (cfg.top_p, cfg.temperature, cfg.top_k, cfg.stream, cfg.prompt) == (0.5, 0, 2, True, ["x"])
    # a many-valued flag takes words up to the next option, but a setting of a config key ends its values
    argv = ["shards", "--input", "a.jsonl", "tokenizer=tok", "lang=en/b.jsonl", "out=s", "--workers", "2"]
    cfg, _ = run_until_work(argv, loaded, ShardsConfig)
    assert (cfg.input, cfg.tokenizer, cfg.out, cfg.workers) == (["a.jsonl", "lang=en/b.jsonl"], "tok", "s", 2)


def test_generate_loads_on_the_chosen_device_and_dtype(loaded):
    import torch

    _, (model_dir, device, dtype) = run_until_work(
        ["generate", "m", "--prompt", "x", "--dtype", "bfloat16", "device=cpu"], loaded, GenerateConfig
    )
    assert (model_dir, device, dtype) == ("m", torch.device("cpu"), torch.bfloat16)


def test_a_preset_by_name(loaded):
    cfg, _ = run_until_work(
        ["generate", "m", "--config", "generate/sample", "--prompt", "x"], loaded, GenerateConfig
    )
    assert (cfg.temperature, cfg.top_k, cfg.max_new_tokens) == (0.8, 40, 60)


def documented_commands() -> list[list[str]]:
    """The ``lmforge`` command lines of the README's and docs' bash blocks for the stages above, with
    ``[optional]`` brackets dropped and continuation lines joined."""
    root = Path(__file__).resolve().parents[1]
    commands = []
    for doc in (root / "README.md", root / "docs" / "training.md"):
        for block in doc.read_text(encoding="utf-8").split("```bash")[1:]:
            for line in block.split("```", 1)[0].replace("\\\n", " ").splitlines():
                words = shlex.split(line.replace("[", "").replace("]", ""), comments=True)
                if words[:1] == ["lmforge"] and words[1] in STAGES:
                    commands.append(words[1:])
    return commands


def test_documented_commands_get_past_their_config(loaded):
    commands = documented_commands()
    assert {c[0] for c in commands} == set(STAGES)
    for argv in commands:
        with pytest.raises(WorkStarted):
            main(argv)


def test_demo_passes_its_keys_and_the_training_ones(loaded):
    argv = ["demo", "--minutes", "0.5", "max_steps=5", "model.n_layer=2", "seed=9", "out=d"]
    cfg, started = run_until_work(argv, loaded, DemoConfig)
    assert cfg == DemoConfig(minutes=0.5, out="d", seed=9)
    assert started == ("d", 0.5, 9, ["max_steps=5", "model.n_layer=2"])


@pytest.mark.parametrize("name", STAGES)
def test_unknown_key_fails_before_work_naming_it(name, loaded, capsys):
    stage = STAGES[name]
    assert main([*stage.command, *stage.flags, "bogus_key=1"]) == 2
    err = capsys.readouterr().err
    assert "unknown config key bogus_key" in err and "valid keys:" in err


def test_bad_values_and_files_fail_before_work(loaded, tmp_path, capsys):
    assert main(["generate", "m", "--prompt", "x", "--temperature", "warm"]) == 2
    assert "temperature: expected a number, got 'warm'" in capsys.readouterr().err
    assert main(["tokenizer", "train", "--input", "a.txt", "--out", "t", "kind=unigram"]) == 2
    assert "kind: expected one of ['bpe', 'wordpiece', 'char']" in capsys.readouterr().err
    bad = tmp_path / "bad.yaml"
    bad.write_text("datta: shards\n", encoding="utf-8")
    assert main(["eval", "perplexity", "runs/x", "--config", str(bad)]) == 2
    assert "bad.yaml: unknown config key datta for PerplexityConfig" in capsys.readouterr().err
    assert main(["demo", "model.n_layr=2"]) == 2  # a training key, checked before the corpus is built
    assert "unknown config key model.n_layr" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["generate", "m"], "config key prompt is required"),
        (["shards", "--input", "c.jsonl", "--out", "s"], "config key tokenizer is required"),
        (["eval", "perplexity", "runs/x"], "config key data is required"),
        (["convert", "out"], "set exactly one of from_hf"),
        (["convert", "out", "--from-hf", "a", "to_hf=b"], "set exactly one of from_hf"),
    ],
)
def test_required_keys(argv, message, loaded, capsys):
    assert main(argv) == 2
    assert message in capsys.readouterr().err


def test_unknown_flag_is_an_argparse_error(loaded, capsys):
    with pytest.raises(SystemExit) as e:
        main(["generate", "m", "--prompt", "x", "--temprature", "0"])
    assert e.value.code == 2 and "unrecognized arguments: --temprature" in capsys.readouterr().err


@pytest.mark.parametrize("name", STAGES)
def test_help_lists_every_key_with_type_default_and_help(name, capsys):
    stage = STAGES[name]
    with pytest.raises(SystemExit) as e:
        main([*stage.words, "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert f"config keys of {stage.cls.__name__}" in out
    for key in config_keys(stage.cls):
        cells = [re.escape(c) for c in (key.name, type_label(key.type), json.dumps(key.default))]
        line = rf"^  {' +'.join(cells)}(  +{re.escape(key.help)})?$"
        assert re.search(line, out, re.MULTILINE), key
    for option in {f for f in stage.flags if f.startswith("--")}:
        assert f"  {option}" in out


def test_help_text_comes_from_the_dataclass(capsys):
    with pytest.raises(SystemExit):
        main(["generate", "--help"])
    out = capsys.readouterr().out
    assert re.search(r"^  temperature +float +1\.0 +0: greedy$", out, re.MULTILINE)  # GenerationConfig's
    assert re.search(r"^  --max-new-tokens MAX_NEW_TOKENS\n +sets max_new_tokens$", out, re.MULTILINE)
    assert "--dtype {auto,float32,bfloat16,float16}" in out


@dataclass
class _Base:
    a: int = 1  # from a comment
    b: str = field(default="x", metadata={"help": "from metadata"})  # not this comment


@dataclass
class _Child(_Base):
    c: list[int] = field(default_factory=list)
    d: str = "#"  # a '#' in the default does not start the help


def test_field_help_reads_metadata_then_comments_through_bases():
    assert field_help(_Child) == {
        "a": "from a comment",
        "b": "from metadata",
        "c": "",
        "d": "a '#' in the default does not start the help",
    }
    table = describe_config(_Child)
    assert re.search(r"^  c +list\[int\] +\[\]$", table, re.MULTILINE)


def test_presets_are_listed_and_every_help_shows_keys_defaults_and_its_presets(capsys):
    assert main(["presets"]) == 0
    listed = capsys.readouterr().out
    for name in ("gpt2-small", "train/demo", "data/refinedweb", "models/llama-small", "generate/sample"):
        assert f"  {name} " in listed
    helps = {
        ("pretrain",): ("max_steps", "1000", "train/demo", "gpt2-small"),
        ("data", "run"): ("data/refinedweb", "data/fineweb", "stage.NAME.KEY"),
        ("generate",): ("temperature", "generate/sample"),
    }
    for words, expected in helps.items():
        with pytest.raises(SystemExit):
            main([*words, "--help"])
        shown = capsys.readouterr().out
        assert all(e in shown for e in expected), (words, [e for e in expected if e not in shown])
