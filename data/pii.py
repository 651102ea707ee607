"""PII redaction: emails, public IP addresses, secret keys and passwords.

Pure functions over a file's text. Each finder yields spans; overlapping spans are
resolved (earliest, then longest wins) and replaced by placeholders, so the output is
still readable code. Precision matters as much as recall: code is full of things that
look like PII and are not (version strings, private addresses, hashes, UUIDs,
decorators, ``@scope/package`` names), and redacting them would teach the model noise.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Iterator

from lathe.data.config import PIIConfig

PLACEHOLDERS: dict[str, str] = {
    "email": "<EMAIL>",
    "ip_address": "<IP_ADDRESS>",
    "key": "<KEY>",
    "password": "<PASSWORD>",
}


@dataclass(frozen=True)
class Span:
    """A region of text to replace by the placeholder of ``kind``."""

    start: int
    end: int
    kind: str


# --- emails -----------------------------------------------------------------------------
_EMAIL = re.compile(
    r"(?<![\w.%+-])[A-Za-z0-9][A-Za-z0-9._%+-]*@(?:[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?\.)+([A-Za-z]{2,24})(?![\w-])"
)
# `icon@2x.png` and friends: the "TLD" is a file extension, not a domain.
_FILE_EXTENSIONS = frozenset(
    "png jpg jpeg gif svg webp ico bmp js mjs ts css scss json html htm py pyc md txt xml yaml yml "
    "so dll dylib exe zip gz tar whl map wasm".split()
)


def find_emails(text: str) -> Iterator[Span]:
    """Email addresses (not decorators, ``@scope/pkg``, ``pkg@1.2.3`` or ``icon@2x.png``)."""
    for m in _EMAIL.finditer(text):
        if m.group(1).lower() in _FILE_EXTENSIONS:
            continue
        yield Span(m.start(), m.end(), "email")


# --- IP addresses -----------------------------------------------------------------------
_IPV4 = re.compile(r"(?<![\w.])(?:\d{1,3}\.){3}\d{1,3}(?!\.?\w)")
_IPV6 = re.compile(
    r"(?<![\w:.])(?=[0-9A-Fa-f]*:[0-9A-Fa-f]*:[0-9A-Fa-f]*:)[0-9A-Fa-f]{0,4}(?::[0-9A-Fa-f]{0,4}){2,7}(?![\w:])"
)
# Dotted numbers that are not addresses: versions, ASN.1 object identifiers, section numbers.
_NOT_AN_ADDRESS_CONTEXT = re.compile(r"version|release|objectidentifier|\boid\b|section|rfc\s*\d", re.IGNORECASE)
_DOTTED = re.compile(r"(?<![\w.])\d+(?:\.\w+)+")
_GLOBAL_UNICAST_V6 = ipaddress.ip_network("2000::/3")


def _line_of(text: str, pos: int) -> str:
    start = text.rfind("\n", 0, pos) + 1
    end = text.find("\n", pos)
    return text[start : end if end != -1 else len(text)]


def find_ip_addresses(text: str) -> Iterator[Span]:
    """Public IPv4/IPv6 addresses; private, loopback, reserved and version-like ones are kept."""
    for m in _IPV4.finditer(text):
        octets = m.group(0).split(".")
        if any(len(o) > 1 and o[0] == "0" for o in octets):
            continue  # 01.02.03.04 is a date or a version, not an address
        try:
            addr = ipaddress.IPv4Address(m.group(0))
        except ValueError:
            continue
        if not addr.is_global:
            continue
        line = _line_of(text, m.start())
        if _NOT_AN_ADDRESS_CONTEXT.search(line):
            continue
        # A line that also has dotted numbers of another shape (`'3.2.pl0', '3.1.1.6'`) lists versions.
        if any(len(d.split(".")) != 4 for d in _DOTTED.findall(line)):
            continue
        before = text[max(0, m.start() - 2) : m.start()]
        if before in (">=", "<=", "==", "~=", "!=") or before[-1:] in ("<", ">", "^", "~", "-", "#"):
            continue  # a version constraint (numpy>=1.21.0.0) or an anchor (#section-7.2.3.1)
        yield Span(m.start(), m.end(), "ip_address")
    for m in _IPV6.finditer(text):
        try:
            addr6 = ipaddress.IPv6Address(m.group(0))
        except ValueError:
            continue
        # Only the allocated global unicast block: `dead::beef` and C++'s `a::b` are not addresses.
        if addr6 in _GLOBAL_UNICAST_V6 and addr6.is_global:
            yield Span(m.start(), m.end(), "ip_address")


# --- keys and passwords -----------------------------------------------------------------
@lru_cache(maxsize=1)
def _detect_secrets_patterns() -> list[re.Pattern[str]]:
    """The denylist regexes of detect-secrets' token-format detectors.

    Only detectors that recognise a token by its format are used; the keyword and
    entropy detectors flag too much ordinary code (hashes, test vectors) to redact on.
    Running the compiled regexes over the whole file is ~100x faster than the plugins'
    per-line ``analyze_line`` under default settings.
    """
    from detect_secrets.plugins import (
        aws,
        azure_storage_key,
        discord,
        github_token,
        gitlab_token,
        jwt,
        mailchimp,
        npm,
        openai,
        pypi_token,
        sendgrid,
        slack,
        square_oauth,
        stripe,
        telegram_token,
        twilio,
    )

    detectors = [
        aws.AWSKeyDetector, azure_storage_key.AzureStorageKeyDetector, discord.DiscordBotTokenDetector,
        github_token.GitHubTokenDetector, gitlab_token.GitLabTokenDetector, jwt.JwtTokenDetector,
        mailchimp.MailchimpDetector, npm.NpmDetector, openai.OpenAIDetector, pypi_token.PypiTokenDetector,
        sendgrid.SendGridDetector, slack.SlackDetector, square_oauth.SquareOAuthDetector,
        stripe.StripeDetector, telegram_token.TelegramBotTokenDetector, twilio.TwilioKeyDetector,
    ]
    return [rx for det in detectors for rx in det.denylist]


_OWN_KEY_PATTERNS = [
    re.compile(r"AIza[0-9A-Za-z_-]{35}"),  # Google API key
    re.compile(r"\bhf_[A-Za-z]{34}\b"),  # Hugging Face token
    re.compile(r"\bglpat-[0-9A-Za-z_-]{20}\b"),  # GitLab personal access token
    re.compile(r"\bgithub_pat_[0-9A-Za-z_]{82}\b"),  # GitHub fine-grained token
]
_PRIVATE_KEY_BLOCK = re.compile(
    r"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----.*?(?:-----END (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----|\Z)",
    re.DOTALL,
)
# `api_key = "..."`, `"client_secret": "..."`: the value, when it looks like a real secret.
# No leading `[\w.-]*` for the name's prefix: only the value is replaced, and that prefix
# made the engine retry at every character of every word (5x slower than all else).
_KEY_ASSIGNMENT = re.compile(
    r"(?i)(?:secret|token|api[_-]?key|access[_-]?key|private[_-]?key|auth[_-]?key)[\w-]*['\"]?\s*[:=]\s*(['\"])([^'\"\s]{16,})\1"
)
_PASSWORD_ASSIGNMENT = re.compile(r"(?i)(?:password|passwd|pwd)[\w-]*['\"]?\s*[:=]\s*(['\"])([^'\"\s]{6,})\1")
_URL_PASSWORD = re.compile(r"\b[a-zA-Z][a-zA-Z0-9+.-]*://[^\s:/@'\"]+:([^\s@/'\"]+)@[\w.-]+")
_PLACEHOLDER_CHARS = re.compile(r"[${}<>%()\[\]]|\.\.\.|^x+$|^\*+$", re.IGNORECASE)
# Words documentation uses in place of a credential: `user:pass@host`, `username:token@id`.
_PLACEHOLDER_WORDS = frozenset({"pass", "password", "passwd", "pwd", "pw", "p", "token", "secret", "key", "apikey"})


def _looks_secret(value: str) -> bool:
    # A real credential mixes letters and digits and is not a template or a placeholder.
    if _PLACEHOLDER_CHARS.search(value):
        return False
    return any(c.isdigit() for c in value) and any(c.isalpha() for c in value)


def _secret_group(m: re.Match[str]) -> tuple[int, int]:
    # Replace the captured secret when a regex captures one (context regexes such as
    # `aws...key = "..."`), else the whole match (`ghp_...` captures only its prefix).
    for g in range(m.re.groups, 0, -1):
        if m.group(g) is not None and len(m.group(g)) >= 8:
            return m.span(g)
    return m.span(0)


def find_keys(text: str) -> Iterator[Span]:
    """Secret keys and tokens: private key blocks, known token formats, key assignments."""
    for m in _PRIVATE_KEY_BLOCK.finditer(text):
        yield Span(m.start(), m.end(), "key")
    for rx in (*_detect_secrets_patterns(), *_OWN_KEY_PATTERNS):
        for m in rx.finditer(text):
            start, end = _secret_group(m)
            yield Span(start, end, "key")
    for m in _KEY_ASSIGNMENT.finditer(text):
        if _looks_secret(m.group(2)):
            yield Span(m.start(2), m.end(2), "key")


def find_passwords(text: str) -> Iterator[Span]:
    """Passwords in URLs (``scheme://user:pw@host``) and in ``password = "..."`` assignments."""
    for m in _URL_PASSWORD.finditer(text):
        value = m.group(1)
        if not _PLACEHOLDER_CHARS.search(value) and value.lower() not in _PLACEHOLDER_WORDS:
            yield Span(m.start(1), m.end(1), "password")
    for m in _PASSWORD_ASSIGNMENT.finditer(text):
        if _looks_secret(m.group(2)):
            yield Span(m.start(2), m.end(2), "password")


# When spans overlap, the more specific kind wins: `user:pw@host` is a password in a URL,
# not an email address starting at the password.
_PRIORITY = {"key": 0, "password": 1, "email": 2, "ip_address": 3}


def find_pii(text: str, cfg: PIIConfig) -> list[Span]:
    """All PII spans of the enabled kinds, non-overlapping, in text order."""
    spans: list[Span] = []
    if cfg.keys:
        spans += find_keys(text)
    if cfg.passwords:
        spans += find_passwords(text)
    if cfg.emails:
        spans += find_emails(text)
    if cfg.ip_addresses:
        spans += find_ip_addresses(text)
    spans.sort(key=lambda s: (_PRIORITY[s.kind], s.start, -(s.end - s.start)))
    chosen: list[Span] = []
    for span in spans:  # a file holds few spans: the quadratic overlap check is cheap
        if all(span.end <= c.start or span.start >= c.end for c in chosen):
            chosen.append(span)
    return sorted(chosen, key=lambda s: s.start)


def redact(text: str, cfg: PIIConfig) -> tuple[str, dict[str, int]]:
    """Replace PII by placeholders; return the new text and counts per kind."""
    counts = {kind: 0 for kind in PLACEHOLDERS}
    spans = find_pii(text, cfg)
    if not spans:
        return text, counts
    out, pos = [], 0
    for span in spans:
        out.append(text[pos : span.start])
        out.append(PLACEHOLDERS[span.kind])
        counts[span.kind] += 1
        pos = span.end
    out.append(text[pos:])
    return "".join(out), counts
