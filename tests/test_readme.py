"""Every command of the README's CLI block (the ```bash block under "## The CLI") runs, in order, on tiny
inputs this test builds, so the README cannot drift from the code again.

The block is read the way bash reads it (comments dropped, ``\\`` continuations joined, unquoted globs
expanded); each ``[optional ...]`` part is included. Placeholders (``HF_DIR``, ``input=...``) are mapped
to real files, tiny sizes are appended as ``key=value`` words, and each ``lmforge ...`` line runs
in-process through ``lmforge.cli.main``. A line that is not an ``lmforge`` command must be listed in
``CHECKED_ONLY`` with its reason and a check, or the test fails.
"""

from __future__ import annotations

import glob
import gzip
import re
import shlex
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from lmforge.cli import build_parser, main, parse_args
from lmforge.config import ConfigError, load_config
from lmforge.train.config import TrainConfig
from test_zeroshot import write_fixtures

README = Path(__file__).resolve().parents[1] / "README.md"

# Tiny sizes, appended as key=value words (a flag wins over key=value: sizes the README sets by flag that
# these must not override, like the demo's --minutes, are bounded by max_steps instead).
TINY_TRAIN = (
    "model.n_layer=1 model.d_model=32 model.n_head=2 model.max_seq_len=64 data.seq_len=32 max_steps=4 "
    "eval_every=2 eval_batches=1 batch_size=2 grad_accum=1 compile=false progress=false threads=1"
)  # max_seq_len 64: `generate` asks for 60 new tokens after the prompt
TINY_DEMO = (
    "model.n_layer=1 model.d_model=32 model.n_head=2 max_steps=4 eval_every=2 eval_batches=1 "
    "batch_size=2 progress=false threads=1"
)
EXTRAS = {  # command prefix -> words appended to it
    "lmforge data run ": "workers=1 progress=false",
    "lmforge shards ": "--workers 1",  # a flag, to win over `--workers 8` (test_shards.py runs a pool)
    "lmforge demo": TINY_DEMO,
}


def placeholders(hf_dir: Path) -> dict[str, str]:
    """README text -> what runs instead, applied in this order; every entry must still be used."""
    return {
        # ray.address=auto joins a running Ray cluster: the test starts a local Ray (workers=1) instead, as
        # the Ray tests of test_data_pipeline.py do
        "input=... output=... executor=ray ray.address=auto": "input=pages/ output=clean-ray/ executor=ray",
        # the FineWeb line is an alternative to the first one: a folder holding another config's run is
        # refused (by design), so it writes its own
        "data/fineweb input=pages/ output=clean/": "data/fineweb input=pages/ output=clean-fw/",
        "key=value ...": TINY_TRAIN,
        "gpt2-small ...": "gpt2-small data.shards=shards/ out_dir=runs/fsdp",
        "HF_DIR OUT_DIR": f"{shlex.quote(str(hf_dir))} lmf/",
        "LMF_DIR OUT_DIR": "lmf/ hf/",
        "MODEL_DIR": "runs/x/model",
    }


# ---- reading the block as bash would


def cli_block(readme: str) -> str:
    """The first ```bash block after the "## The CLI" heading."""
    found = re.search(r"^## The CLI\n.*?^```bash\n(.*?)^```", readme, re.S | re.M)
    assert found, 'README.md has no ```bash block under "## The CLI"'
    return found[1]


def strip_comment(line: str) -> str:
    """Drop a comment as bash does: from a ``#`` that starts a word outside quotes."""
    quote = ""
    for i, ch in enumerate(line):
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i].rstrip()
    return line.rstrip()


def expand_optional(command: str) -> str:
    """``[--workers 8]`` -> ``--workers 8``: a bracket that starts a word is optional syntax, while one
    inside a word (``skip=[pii]``) is a value."""
    return re.sub(r"(?<!\S)\[([^\[\]]*)\]", r"\1", command)


def commands(block: str) -> list[str]:
    """The block's commands: comments stripped, continuations joined, optional parts included."""
    out: list[str] = []
    pending = ""
    for line in block.splitlines():
        line = strip_comment(line)
        if line.endswith("\\"):
            pending += line[:-1].strip() + " "
            continue
        command = (pending + line.strip()).strip()
        pending = ""
        if command:
            out.append(expand_optional(command))
    return out


def shell_words(command: str) -> list[str]:
    """``shlex.split``, plus what bash does to an unquoted glob: the sorted paths it matches."""
    bare = set(command.split())
    words: list[str] = []
    for word in shlex.split(command):
        matches = sorted(glob.glob(word)) if word in bare and glob.has_magic(word) else []
        words += matches or [word]
    return words


# ---- running it


def lmforge(argv: list[str]) -> int:
    """``lmforge.cli.main`` in-process; an argparse usage error exits, which is a failure too."""
    try:
        return main(argv)
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else 1


def check_launched_pretrain(words: list[str]) -> None:
    """``torchrun ... -m lmforge pretrain ...``: the ``lmforge`` part parses and its config validates."""
    argv = words[words.index("lmforge") + 1 :]
    args = parse_args(build_parser(), argv)
    assert args.command == "pretrain", f"no check for launched `lmforge {args.command}`: add one"
    load_config(TrainConfig, args.config, args.overrides)


# First word -> (why the test does not run it, what it checks instead).
CHECKED_ONLY: dict[str, tuple[str, Callable[[list[str]], None]]] = {
    "torchrun": ("launches one process per GPU", check_launched_pretrain),
}


def run_command(command: str, subs: dict[str, str], used: set[str]) -> None:
    """Run one README command (after placeholders and tiny sizes); fail naming it if it fails."""
    ran = command
    for key, value in subs.items():
        if key in ran:
            ran = ran.replace(key, value)
            used.add(key)
    ran += "".join(f" {extra}" for prefix, extra in EXTRAS.items() if ran.startswith(prefix))
    words = shell_words(ran)
    if words[0] in CHECKED_ONLY:
        try:
            CHECKED_ONLY[words[0]][1](words)
        except (ConfigError, SystemExit) as e:
            pytest.fail(f"README command invalid ({e}):\n  {command}\nchecked as: {ran}")
        return
    if words[0] != "lmforge":
        pytest.fail(f"README command neither run nor listed in CHECKED_ONLY (with a reason):\n  {command}")
    rc = lmforge(words[1:])
    if rc != 0:
        pytest.fail(f"README command failed (exit {rc}):\n  {command}\nran as: {ran}")


def run_block(readme: str, hf_dir: Path) -> list[str]:
    """Run every command of the README's CLI block in order; returns them."""
    subs = placeholders(hf_dir)
    used: set[str] = set()
    block = commands(cli_block(readme))
    for command in block:
        run_command(command, subs, used)
    assert used == set(subs), f"placeholders the README no longer has (update the test): {set(subs) - used}"
    return block


# ---- tiny inputs


def prose_docs(n: int) -> list[str]:
    """``n`` distinct English documents of three paragraphs from CPython's reference manual (PSF licence),
    with symbols stripped so that the web-quality filters keep them."""
    import pydoc_data.topics

    paragraphs = []
    for name in sorted(pydoc_data.topics.topics):
        for para in pydoc_data.topics.topics[name].split("\n\n"):
            if para.startswith(" ") or ">>>" in para or "::" in para:  # code, not prose
                continue
            para = re.sub(r"\s+", " ", re.sub(r"[^\w\s.,]", "", para)).strip()
            if para.endswith(".") and len(para.split()) >= 40:
                paragraphs.append(para)
    assert len(paragraphs) >= 3 * n
    return ["\n\n".join(paragraphs[3 * i : 3 * i + 3]) for i in range(n)]


def html_page(title: str, text: str) -> str:
    paras = "".join(f"<p>{p}</p>\n" for p in text.split("\n\n"))
    head = f"<!doctype html><html lang=en><head><title>{title}</title></head>"
    return f"{head}<body><article>\n{paras}</article></body></html>\n"


def warc_record(url: str, html: str) -> bytes:
    """One gzip member holding a WARC/1.0 response record (a .warc.gz is a sequence of them)."""
    payload = b"HTTP/1.1 200 OK\r\nContent-Type: text/html; charset=utf-8\r\n\r\n" + html.encode()
    head = (
        f"WARC/1.0\r\nWARC-Type: response\r\nWARC-Target-URI: {url}\r\nWARC-Date: 2024-01-01T00:00:00Z\r\n"
        f"WARC-Record-ID: <urn:uuid:{uuid.uuid5(uuid.NAMESPACE_URL, url)}>\r\n"
        f"Content-Type: application/http; msgtype=response\r\nContent-Length: {len(payload)}\r\n\r\n"
    )
    return gzip.compress(head.encode() + payload + b"\r\n\r\n")


def make_inputs(root: Path) -> None:
    """``crawl/*.warc.gz`` (enough text for a val split of a few windows), ``pages/``, ``corpus/*.txt``
    and ``eval/``: the README's inputs; every other path is written by an earlier command."""
    docs = prose_docs(90)
    for name in ("crawl", "pages", "corpus"):
        (root / name).mkdir()
    records = (warc_record(f"https://example.org/{i}", html_page(f"Doc {i}", d)) for i, d in enumerate(docs))
    (root / "crawl/part-0.warc.gz").write_bytes(b"".join(records))
    for i, doc in enumerate(docs[:10]):
        (root / f"pages/{i}.html").write_text(html_page(f"Page {i}", doc), encoding="utf-8")
        (root / f"corpus/{i}.txt").write_text(doc, encoding="utf-8")
    write_fixtures(root / "eval")  # the zero-shot task files, two items each


@pytest.fixture
def keep_torch_threads():
    """The runs set ``threads=1``, which is process-wide: give later tests their thread count back."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.mark.slow
@pytest.mark.usefixtures("keep_torch_threads")
def test_every_readme_cli_command_runs(tmp_path, monkeypatch, hf_gpt2_dir):
    monkeypatch.chdir(tmp_path)
    make_inputs(tmp_path)
    block = run_block(README.read_text(encoding="utf-8"), hf_gpt2_dir)
    assert len(block) >= 15
    assert (tmp_path / "runs/x/model").is_dir() and (tmp_path / "hf/config.json").is_file()


def test_a_drifted_or_unlisted_command_fails(tmp_path, monkeypatch, capsys):
    """The guard itself: a key the preset does not have (the drift this test was written for) and a line
    that is neither an ``lmforge`` command nor listed both fail, naming the line."""
    monkeypatch.chdir(tmp_path)
    drifted = "lmforge data run --config data/fineweb input=pages/ output=clean/ skip=[exact_substring]"
    with pytest.raises(pytest.fail.Exception, match="README command failed"):
        run_command(drifted, {}, set())
    assert "'exact_substring', which is not in stages" in capsys.readouterr().err
    with pytest.raises(pytest.fail.Exception, match="neither run nor listed"):
        run_command(commands("curl -O https://example.org/crawl.warc.gz  # fetch")[0], {}, set())


def test_the_block_is_read_as_bash_reads_it():
    block = 'a --x "#1" [--y 2] skip=[b]  # note [c]\n\n# only a comment\nb --p 1 \\\n    [--q "\\n"]\n'
    assert commands(block) == ['a --x "#1" --y 2 skip=[b]', 'b --p 1 --q "\\n"']
