"""A thin wrapper over a Hugging Face ``tokenizers.Tokenizer`` that knows its special tokens and its
chat template.

On disk a tokenizer is the standard pair ``tokenizer.json`` + ``tokenizer_config.json`` (which holds the
chat template, as transformers writes it), so ``transformers.AutoTokenizer`` /
``PreTrainedTokenizerFast`` load the same folder unchanged.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from tokenizers import Tokenizer as HFTokenizer
from tokenizers import decoders, models, pre_tokenizers

from lmforge.errors import LmforgeError

# Decoders use bos/eos/pad/unk; encoders (BERT) also [CLS], [SEP] and [MASK].
SPECIAL_ROLES = ("bos_token", "eos_token", "pad_token", "unk_token", "cls_token", "sep_token", "mask_token")


def _token_content(value: object) -> str | None:
    """tokenizer_config.json stores a special token as a string or as an AddedToken dict."""
    if isinstance(value, dict):
        return value.get("content")
    return value if isinstance(value, str) else None


def _chat_template(d: Path, cfg: dict) -> str | None:
    """The folder's chat template, where transformers looks for it."""
    if (d / "chat_template.jinja").is_file():
        return (d / "chat_template.jinja").read_text(encoding="utf-8")
    template = cfg.get("chat_template")
    if isinstance(template, list):
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
        template = named.get("default")
    return template if isinstance(template, str) and template else None


class Tokenizer:
    """Text <-> ids, with the special tokens a language model needs (bos/eos/pad/unk)."""

    def __init__(
        self,
        backend: HFTokenizer,
        special_tokens: dict[str, str | None] | None = None,
        chat_template: str | None = None,
    ):
        # A tokenizer.json may carry padding/truncation settings (sentence-transformers folders pad to
        # 128): ids must be the text's own, so batching and length limits are the caller's business.
        backend.no_padding()
        backend.no_truncation()
        self.backend = backend
        self.chat_template = chat_template  # Jinja source that renders messages (tokenizer/chat.py)
        self.special_tokens = {role: None for role in SPECIAL_ROLES}
        for role, tok in (special_tokens or {}).items():
            if tok is not None and backend.token_to_id(tok) is None:
                raise LmforgeError(f"special token {role}={tok!r} is not in the tokenizer's vocabulary")
            self.special_tokens[role] = tok

    def _id(self, role: str) -> int | None:
        tok = self.special_tokens.get(role)
        return None if tok is None else self.backend.token_to_id(tok)

    @property
    def bos_id(self) -> int | None:
        return self._id("bos_token")

    @property
    def eos_id(self) -> int | None:
        return self._id("eos_token")

    @property
    def pad_id(self) -> int | None:
        return self._id("pad_token")

    @property
    def unk_id(self) -> int | None:
        return self._id("unk_token")

    @property
    def cls_id(self) -> int | None:
        return self._id("cls_token")

    @property
    def sep_id(self) -> int | None:
        return self._id("sep_token")

    @property
    def mask_id(self) -> int | None:
        return self._id("mask_token")

    @property
    def vocab_size(self) -> int:
        return self.backend.get_vocab_size(with_added_tokens=True)

    def fingerprint(self) -> str:
        """A hash of what maps text to ids (normalizer, pre-tokenizer, model vocabulary and merges, added
        tokens): two tokenizers with the same fingerprint give the same ids, so a model and token shards
        can be checked to speak the same vocabulary, not just one of the same size."""
        spec = json.loads(self.backend.to_str())
        added = sorted((t["id"], t["content"]) for t in spec.get("added_tokens") or [])
        keys = ("normalizer", "pre_tokenizer", "model")
        canonical = json.dumps({**{k: spec.get(k) for k in keys}, "added": added}, sort_keys=True)
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]

    def encode(self, text: str, add_bos: bool = False) -> list[int]:
        ids = self.backend.encode(text, add_special_tokens=False).ids
        return [self.bos_id, *ids] if add_bos and self.bos_id is not None else ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [e.ids for e in self.backend.encode_batch(texts, add_special_tokens=False)]

    def encode_offsets(self, texts: list[str]) -> list[tuple[list[int], list[tuple[int, int]]]]:
        """(ids, offsets) per text: token i covers characters ``text[start:end]`` of its text (QA maps
        answer spans between characters and tokens with them)."""
        return [(e.ids, e.offsets) for e in self.backend.encode_batch(texts, add_special_tokens=False)]

    def encode_words(self, sentences: list[list[str]]) -> list[tuple[list[int], list[int]]]:
        """(ids, word index of each id) per pre-split sentence, each word tokenized as a word of a
        sentence is (NER aligns word tags with the sub-word tokens through the word indices)."""
        encodings = self.backend.encode_batch(sentences, is_pretokenized=True, add_special_tokens=False)
        return [(e.ids, e.word_ids) for e in encodings]

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        return self.backend.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def save(self, directory: str | Path) -> None:
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        self.backend.save(str(d / "tokenizer.json"))
        config = {
            "tokenizer_class": "PreTrainedTokenizerFast",
            "model_max_length": 1_000_000_000,
            **{role: tok for role, tok in self.special_tokens.items() if tok is not None},
            **({"chat_template": self.chat_template} if self.chat_template else {}),
        }
        (d / "tokenizer_config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")

    @classmethod
    def load(cls, directory: str | Path) -> Tokenizer:
        """Load ``tokenizer.json`` (or GPT-2's ``vocab.json`` + ``merges.txt``), the special tokens and
        the chat template: ``chat_template.jinja``, else ``chat_template`` in ``tokenizer_config.json``
        (a string, or a list of named templates: the one named "default")."""
        d = Path(directory)
        if (d / "tokenizer.json").is_file():
            try:
                backend = HFTokenizer.from_file(str(d / "tokenizer.json"))
            except Exception as e:
                raise LmforgeError(f"{d / 'tokenizer.json'}: not a valid tokenizers file ({e})") from None
        elif (d / "vocab.json").is_file() and (d / "merges.txt").is_file():
            backend = HFTokenizer(models.BPE.from_file(str(d / "vocab.json"), str(d / "merges.txt")))
            backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
            backend.decoder = decoders.ByteLevel()
        else:
            raise LmforgeError(f"{d}: no tokenizer.json (nor vocab.json + merges.txt) found")
        special: dict[str, str | None] = {}
        cfg_path, cfg = d / "tokenizer_config.json", {}
        if cfg_path.is_file():
            try:
                cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
            except json.JSONDecodeError as e:
                raise LmforgeError(f"{cfg_path}: not valid JSON ({e})") from None
            for role in SPECIAL_ROLES:
                tok = _token_content(cfg.get(role))
                if tok is not None and backend.token_to_id(tok) is not None:
                    special[role] = tok
        return cls(backend, special, _chat_template(d, cfg))
