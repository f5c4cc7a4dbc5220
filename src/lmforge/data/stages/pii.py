"""PII masking (FineWeb, after dedup): e-mail addresses and public IPv4 addresses become fixed dummies."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from itertools import cycle

import regex

from lmforge.data.document import Document
from lmforge.data.stages.base import Stage

_EMAIL_RE = regex.compile(r"\b[A-Za-z0-9._%+\-]+@(?:[A-Za-z0-9\-]+\.)+[A-Za-z]{2,}\b")
_IPV4_RE = regex.compile(r"\b(?:(?:25[0-5]|2[0-4]\d|1?\d?\d)\.){3}(?:25[0-5]|2[0-4]\d|1?\d?\d)\b")


@dataclass
class PiiConfig:
    emails: bool = True
    ips: bool = True
    email_replacements: list[str] = field(
        default_factory=lambda: ["email@example.com", "firstname.lastname@example.org"]
    )
    ip_replacements: list[str] = field(default_factory=lambda: ["192.0.2.1", "198.51.100.7", "203.0.113.42"])


class Pii(Stage):
    """Rewrites matches in place and never drops a document. Dummies rotate per document, so the output is
    the same whichever worker masks it."""

    name = "pii"
    config_class = PiiConfig

    def __call__(self, doc: Document) -> str | None:
        if self.cfg.emails:
            emails = cycle(self.cfg.email_replacements)
            doc.text = _EMAIL_RE.sub(lambda m: next(emails), doc.text)
        if self.cfg.ips:
            ips = cycle(self.cfg.ip_replacements)
            doc.text = _IPV4_RE.sub(
                lambda m: next(ips) if ipaddress.ip_address(m[0]).is_global else m[0], doc.text
            )
        return None
