from dataclasses import dataclass, field

import pytest

from lmforge.config import ConfigError, load_config, parse_overrides, save_config
from lmforge.models.gpt import GPTConfig


@dataclass
class Inner:
    lr: float = 1e-3
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])


@dataclass
class Outer:
    name: str = "x"
    steps: int = 10
    inner: Inner = field(default_factory=Inner)
    out: str | None = None


def test_yaml_and_overrides(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("name: run\ninner:\n  lr: 0.01\n")
    cfg = load_config(Outer, p, ["steps=5", "inner.betas=[0.8, 0.9]", "out=runs/a"])
    assert cfg == Outer(name="run", steps=5, inner=Inner(lr=0.01, betas=[0.8, 0.9]), out="runs/a")
    save_config(cfg, tmp_path / "resolved.yaml")
    assert load_config(Outer, tmp_path / "resolved.yaml") == cfg


def test_unknown_key_names_key_and_valid_ones(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown config key inner\.lrr .*valid keys: betas, lr"):
        load_config(Outer, None, ["inner.lrr=1"])
    p = tmp_path / "bad.yaml"
    p.write_text("stepz: 3\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: unknown config key stepz"):
        load_config(Outer, p)


def test_wrong_types_rejected():
    with pytest.raises(ConfigError, match="steps: expected an integer"):
        load_config(Outer, None, ["steps=abc"])
    with pytest.raises(ConfigError, match="not of the form key=value"):
        parse_overrides(["steps"])
    assert load_config(Outer, None, ["steps=3.0"]).steps == 3


def test_model_presets_load_and_validate():
    cfg = load_config(GPTConfig, "models/gpt2-124m")
    assert (cfg.n_layer, cfg.d_model, cfg.d_ff, cfg.head_dim) == (12, 768, 3072, 64)
    llama = load_config(GPTConfig, "models/llama-small")
    assert llama.pos_emb == "rope" and llama.n_kv_head == 4 and llama.d_ff == 2048
    with pytest.raises(ConfigError, match="multiple of n_kv_head"):
        load_config(GPTConfig, "models/llama-small", ["n_kv_head=5"])
    with pytest.raises(ConfigError, match="expected one of"):
        load_config(GPTConfig, None, ["norm=batchnorm"])


def test_every_float_spelling_and_the_right_source_of_a_bad_value(tmp_path):
    """YAML 1.1 reads 1e-3 (no dot) as a string: it is still a number; a bad value on the command line is
    blamed on the command line, one in the file on the file."""
    from lmforge.train.config import TrainConfig

    (tmp_path / "c.yaml").write_text("optim:\n  lr: 1e-3\n  min_lr: 1E-5\n")
    cfg = load_config(TrainConfig, tmp_path / "c.yaml", ["optim.beta2=9.5e-1", "optim.eps=1e-8"])
    assert (cfg.optim.lr, cfg.optim.min_lr, cfg.optim.beta2, cfg.optim.eps) == (1e-3, 1e-5, 0.95, 1e-8)
    with pytest.raises(ConfigError, match=r"^command line: optim.lr: expected a number, got 'abc'"):
        load_config(TrainConfig, tmp_path / "c.yaml", ["optim.lr=abc"])
    with pytest.raises(ConfigError, match=r"^command line: unknown config key optim.learning_rate"):
        load_config(TrainConfig, tmp_path / "c.yaml", ["optim.learning_rate=1"])
    (tmp_path / "b.yaml").write_text("optim:\n  lr: fast\n")
    with pytest.raises(ConfigError, match=r"b.yaml: optim.lr: expected a number, got 'fast'"):
        load_config(TrainConfig, tmp_path / "b.yaml", ["max_steps=5"])
    with pytest.raises(ConfigError, match="expected a number, got 'inf'"):
        load_config(TrainConfig, None, ["optim.lr=inf"])
