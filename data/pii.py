"""PII redaction: emails, public IP addresses, secret keys and passwords.

Pure functions over a file's text. Each finder yields spans; overlapping spans are
resolved (earliest, then longest wins) and replaced by placeholders, so the output is
still readable code. Precision matters as much as recall: code is full of things that
look like PII and are not (version strings, private addresses, hashes, UUIDs,
decorators, ``@scope/package`` names), and redacting them would teach the model noise.

Secrets are found where repositories leak them: values assigned to names of secrets in
code and in every config syntax (``.env``, shell, INI, YAML, JSON, HCL, Dockerfile,
compose, XML), arguments of setters, constructors, logins and ``define``-like calls,
name/value pairs (Kubernetes env lists, Postman), URLs, Go DSNs and connection strings,
command lines, HTTP ``Authorization`` headers and Docker's ``auth``, Kubernetes Secret
manifests, PEM private keys and tokens of known formats.
A value found there is redacted only when it could be a credential (see
``_credential_like``): templates, references and placeholders survive.
benchmarks/pii_bench.py measures both sides on the labelled set in benchmarks/pii/.
"""

from __future__ import annotations

import base64
import ipaddress
import itertools
import re
import string
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from detect_secrets.plugins import (
    aws,
    github_token,
    gitlab_token,
    mailchimp,
    npm,
    openai,
    pypi_token,
    sendgrid,
    slack,
    square_oauth,
    telegram_token,
    twilio,
)
from detect_secrets.plugins.high_entropy_strings import Base64HighEntropyString, HexHighEntropyString
from detect_secrets.plugins.keyword import DENYLIST as DS_KEYWORDS

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


# `scheme://user:password@host`: what precedes the `@` is a password, not an address's local part.
_URL_USERINFO = re.compile(r"://[^\s/@'\"]*:$")
# `git@github.com:acme/site.git`, `deploy@host:~/app`: an scp-style remote (user, host, path), not an address.
_REMOTE_PATH = re.compile(r":[\w~/.-]")


def find_emails(text: str) -> Iterator[Span]:
    """Email addresses (not decorators, ``@scope/pkg``, ``pkg@1.2.3``, ``icon@2x.png``, URL users or git remotes)."""
    for m in _EMAIL.finditer(text):
        if m.group(1).lower() in _FILE_EXTENSIONS:
            continue
        before = text[max(0, m.start() - 3) : m.start()]
        if before == "://":  # `https://jdoe@bitbucket.org/...`: a URL's user name
            continue
        if before[-1:] == ":" and _URL_USERINFO.search(text, max(0, m.start() - 256), m.start()):
            continue
        if _REMOTE_PATH.match(text, m.end()):
            continue
        yield Span(m.start(), m.end(), "email")


# --- IP addresses -----------------------------------------------------------------------
_IPV4 = re.compile(r"(?<![\w.])(?:\d{1,3}\.){3}\d{1,3}(?!\.?\w)")
_IPV6 = re.compile(r"(?<![\w:.])(?=[0-9A-Fa-f]*:[0-9A-Fa-f]*:[0-9A-Fa-f]*:)[0-9A-Fa-f]{0,4}(?::[0-9A-Fa-f]{0,4}){2,7}(?![\w:])")
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


# --- secrets: is a value a credential? --------------------------------------------------
# A value is redacted only when it could be a real credential. What survives, and why:
# - template and reference syntax: the value is filled in elsewhere (`${DB_PASSWORD}`, `$TOKEN`,
#   `{{ .Values.token }}`, `%s`, `{password}`, `<your-key>`, `%APPDATA%`) or masked (`****`, `xxxx`);
#   `%` + two hex digits is a URL escape (`p%40ss`), not a format;
# - placeholders: a value that names itself one (`your-api-key-here`, `changeme`, `REDACTED`), or
#   whose letters are only default/demo words and whose digits, if any, are a trivial run
#   (`password123`, `admin`, `secret`, `scott`/`tiger`): such values carry no secret, and code and
#   docs are full of them; `Password2024!` and `Tiger1981$` are what people really choose;
# - shapes no credential has: too short, no letter, letters only (unless long and random),
#   few distinct characters or, for hex, entropy under detect-secrets' hex limit (test vectors
#   such as `000102...0f` and `0b0b0b...`).
# Generated secrets (Django keys, WordPress salts, random passwords) hold any symbol, so a
# template's or code's syntax can occur in them by chance; see `_looks_random`.
_TEMPLATE = re.compile(
    r"\$[{(]|\{\{|\}\}|\{%|<%|#\{|(?<![A-Za-z0-9$])\$[A-Za-z_\d]|^%\w+%$|<[^<>]*>|\{[\w.\[\]'\"-]*\}"
    r"|\.\.\.|\u2026|\*\*\*|[xX]{4}|^[xX*#.-]+$"
)
_FORMAT_SPEC = re.compile(r"%(?:\(\w+\))?[sdifr](?![0-9A-Fa-f])")
_GLUED_SPEC = re.compile(r"[A-Za-z0-9]%[sdifr][A-Za-z0-9]")
# Symbols that a format string's fixed text (a URL, a path, a name, a sentence) seldom holds.
_ODD_SYMBOL = re.compile(r"[^\w\s:/@.?&=+{}()\[\]-]")
_PLACEHOLDER_WORDS = frozenset(
    "your yours here replace insert enter placeholder changeme changeit redacted dummy fake example sample todo fixme tbd".split()
)
_WORD = re.compile(r"[A-Z]?[a-z]+|[A-Z]+(?![a-z])")
_DEFAULT_LETTERS = re.compile(
    r"(?:pass(?:word|wd)?|pwd|secret|token|key|api|test|demo|default|admin|root|guest|user|my|super|dev|local|"
    r"db|postgres|mysql|redis|abc|xyz|qwerty|asdf|foo|bar|baz|none|null|nil|true|false|empty|scott|tiger)+"
)
_STRONG_SYMBOL = re.compile(r"[^\w.\-\s]")
_HEX_DIGITS = frozenset("0123456789abcdefABCDEF")
_HEX_ENTROPY = HexHighEntropyString()
_B64_ENTROPY = Base64HighEntropyString()


def _char_class(c: str) -> int:
    return 0 if c.islower() or c == "_" else 1 if c.isupper() else 2 if c.isdigit() else 3


def _looks_random(value: str) -> bool:
    """Letters, digits and symbols alternating as in generated strings, not as in code or templates.

    Code and templates are runs of words (`os.urandom(32)`, `self.get_token(lang)`): the class of
    character (lower or `_`, upper, digit, symbol) changes at under 45% of positions. In random
    strings it changes at 60-75% (97% of 50-character Django keys and 82% of 12-character
    passwords, digits included, reach 45%).
    """
    if len(value) < 12 or not any(c.isdigit() for c in value) or not any(c.isalpha() for c in value):
        return False
    classes = [_char_class(c) for c in value]
    return sum(a != b for a, b in itertools.pairwise(classes)) >= 0.45 * (len(classes) - 1)


def _is_template(value: str) -> bool:
    """Template or masking syntax: the value is filled in elsewhere."""
    if _TEMPLATE.search(value):
        # A long generated secret (a WordPress salt) holds `$x` or `<...>` by chance.
        return not (len(value) >= 32 and _looks_random(value))
    if _FORMAT_SPEC.search(value):
        # `%s` in a random password (`3NXBE%sM40t`, `JT0x%@@icX%s`) is no format: what remains is
        # still a credential, glued to the `%s` or holding symbols no format's text has.
        rest = _FORMAT_SPEC.sub("", value)
        return not (_credential_like(rest, "password") and (_GLUED_SPEC.search(value) or _ODD_SYMBOL.search(rest)))
    return False


def _is_trivial_run(digits: str) -> bool:
    """``""``, ``1``, ``123``, ``000``, ``4321``: digits that demo values append, unlike a year or a PIN."""
    return len(digits) <= 2 or digits in "01234567890" or digits in "9876543210" or len(set(digits)) == 1


def _is_placeholder(value: str) -> bool:
    """Template syntax, a masked value, or a value made of placeholder/default words."""
    if _is_template(value):
        return True
    if any(w.lower() in _PLACEHOLDER_WORDS for w in _WORD.findall(value)):
        return True
    letters = "".join(c for c in value.lower() if "a" <= c <= "z")
    return (
        len(letters) <= 40
        and _DEFAULT_LETTERS.fullmatch(letters) is not None
        and _is_trivial_run("".join(c for c in value if c.isdigit()))
    )


def _credential_like(value: str, kind: str) -> bool:
    """Could ``value`` (quotes removed) be a real password (``kind == "password"``) or key/token?"""
    if len(value) < (6 if kind == "password" else 12) or any(c.isspace() for c in value):
        return False
    if not any(c.isalpha() for c in value) or _is_placeholder(value):
        return False
    if not any(c.isdigit() for c in value) and not _STRONG_SYMBOL.search(value):
        # Letters only: a word, an identifier or a name, unless long and random.
        return value.isalpha() and _B64_ENTROPY.calculate_shannon_entropy(value) > _B64_ENTROPY.entropy_limit
    if len(value) >= 20 and set(value) <= _HEX_DIGITS:
        return _HEX_ENTROPY.calculate_shannon_entropy(value) > _HEX_ENTROPY.entropy_limit
    return len(set(value)) >= 5


# Values that are code or names, not credentials: calls, subscripts and comparisons
# (`get_pw()`, `env["X"]`, `a==0`, `x||y`), escapes (`\u3299`), dotted or underscored names of
# words (`var.db_password`, `self.token`, `db_password2`), constants (`B2B_GEMM_PASS`) and class
# names (`V1SecretProjection`, `OAuth2Session`: capitalised words, no trailing digits as passwords
# have, digits only after a word, not inside a run of capitals as in `KyrjH5OKEbpm`).
_CODE = re.compile(r"[(\[{]|[=!<>]=[^=]|&&|\|\|")
_ESCAPE = re.compile(r"\\[uUx][0-9a-fA-F]")
_NAME_PART = re.compile(r"[A-Za-z][a-z]+(?:[A-Z][a-z]+)*\d{0,3}|[A-Z]+\d{0,3}|[a-z]+\d{0,3}")
_NAME_SEPARATORS = re.compile(r"[._:?]+")  # `?` too: `l?i.secretFields:void` is a minified ternary
_CONSTANT = re.compile(r"[A-Z][A-Z0-9]*(?:_[A-Z0-9]+)+")
_CLASS_NAME = re.compile(r"(?:[A-Z]\d*)*[A-Z][a-z]{2,}\d*(?:[A-Z][a-z]{2,}\d*|[A-Z])*[a-z]")


def _is_reference(value: str, data: bool = False) -> bool:
    """Is ``value`` code or a name? ``data``: it stands where only data can (a quoted literal, a
    config line, an XML element), so code's syntax in a random-looking value is chance."""
    if _ESCAPE.search(value) or _CONSTANT.fullmatch(value) or _CLASS_NAME.fullmatch(value):
        return True
    if _CODE.search(value) and not (data and _looks_random(value)):
        return True
    parts = [p for p in _NAME_SEPARATORS.split(value) if p]
    return len(parts) >= 2 and all(_NAME_PART.fullmatch(p) for p in parts)


def _is_secret(value: str, kind: str, data: bool = True) -> bool:
    """A credential-like value that is neither code nor a name (see ``_is_reference``)."""
    return _credential_like(value, kind) and not _is_reference(value, data)


def _named_secret(text: str, m: re.Match[str], value: str = "v") -> Span | None:
    """The span of ``m``'s group ``value`` when ``m``'s group ``name`` names a secret and the value is one."""
    kind = _secret_kind(text[m.start("name") : m.end("name")])
    if kind is not None and _is_secret(text[m.start(value) : m.end(value)], kind):
        return Span(m.start(value), m.end(value), kind)
    return None


# --- secrets: which names hold one ------------------------------------------------------
# detect-secrets' keyword list (api_key, password, secret, ...) plus the names it lacks:
# tokens, passphrases, access/secret/signing keys, credentials and `pass` as a name part
# (`DB_PASS`, `-passin pass:...`) and Redis' `requirepass`/`masterauth`; `token`, `secret` and `pass` must end
# there, so that `tokenizer`, `tokens`, `secretary` and `bypass`/`passthrough` are not names of secrets.
_PASSWORD_WORDS = (
    "password",
    "passwd",
    "passphrase",
    "pwd",
    "db_?pass",
    "database_?pass",
    "key_?pass",
    "requirepass",
    "masterauth",
    "contrase(?:ñ|n)a",
)
_KEY_WORDS = (
    *(w for w in DS_KEYWORDS if "pass" not in w and "contrase" not in w and w not in ("pwd", "secret")),
    "secret(?![a-z])",
    "secret_?key",
    "token(?![a-z])",
    "access_?key",
    "signing_?key",
    "encryption_?key",
    "master_?key",
    "app_?key",
    "credentials?(?![a-z])",
)
# `_?` of detect-secrets' list becomes `[_-]?`: `api-key`, `client-secret`, `X-API-Key`.
_KEYWORD = (rf"(?P<pw>{'|'.join(_PASSWORD_WORDS)}|(?<![a-z0-9])pass(?![a-z]))|(?:{'|'.join(_KEY_WORDS)})").replace("_?", "[_-]?")
# Name parts that make the value something else than the secret: its type, length, location,
# name, hash, id, or the prompt/field/header that asks for it.
_NOT_THE_SECRET = frozenset(
    "type types url uri endpoint length len size min max file path dir name names count env field prompt label header "
    "regex re pattern policy expires expiry expiration ttl timeout format algorithm algo enabled required hash hashed "
    "id ids ref provider version mode class kind hasher hashers validator validators backend manager generator store filename "
    "filepath dict map list mapping schema spec config options option callback handler func fn param params arg args".split()
)
_NAME_PREFIXES_NOT_SECRET = frozenset("max min num is has use show enable require no".split())
_NAME_WORD = re.compile(r"[A-Z]?[a-z]+|[A-Z]+(?![a-z])|\d+")
# The lookahead on the keywords' first letters lets a scan skip most positions (~30% faster).
_KEYWORD_RX = re.compile(rf"(?=[{''.join(sorted({w[0] for w in (*_PASSWORD_WORDS, *_KEY_WORDS, 'pass')}))}])(?:{_KEYWORD})")


def _secret_kind(name: str) -> str | None:
    """``"password"`` or ``"key"`` when ``name`` holds a secret, else None.

    ``DB_PASSWORD``, ``clientSecret``, ``api-key`` hold one; ``token_type``, ``password_file``,
    ``max_tokens``, ``gpg_key`` do not.
    """
    keywords = list(_KEYWORD_RX.finditer(name.lower()))
    words = [w.lower() for w in _NAME_WORD.findall(name)]
    if not keywords or not words or words[0] in _NAME_PREFIXES_NOT_SECRET:
        return None
    hits = [i for i, w in enumerate(words) if w in ("key", "pass") or _KEYWORD_RX.fullmatch(w)]
    if hits and any(w in _NOT_THE_SECRET for w in words[hits[-1] + 1 :]):
        return None
    return "password" if any(k.group("pw") for k in keywords) else "key"


# --- secrets: where they are ------------------------------------------------------------
# `name = value` in code and config: `.env`, shell, INI, YAML, JSON, TOML, HCL, properties,
# Dockerfile `ENV`, compose files, connection strings (`Pwd=...;`), query strings
# (`&password=...`), command-line flags (`--password=...`), subscripts (`$cfg['db_pass'] = ...`,
# `app.config["SECRET_KEY"] = ...`). Matched in the lower-cased
# text (same offsets): a case-sensitive search is ~3x faster than `re.IGNORECASE`.
_VALUE = r"(?:[bru@]?(?:\"(?P<dq>[^\"\n]*)\"|'(?P<sq>[^'\n]*)'|`(?P<bq>[^`\n]*)`)|(?P<bare>[^\s\"'`]+))"
_ASSIGNMENT = re.compile(
    rf"(?P<name>(?:{_KEYWORD})[\w.-]*)(?:\[\d*\])?[\"']?\]?[ \t]*"
    # the operator; `: str =` is a Python annotation (`: &str =`, `: &'static [u8] =` Rust's), `::` a path and `://` a URL
    r"(?:=>|:=|\?=|=(?!=)|:(?![:/])(?:[ \t]*&?(?:'[a-z]+[ \t]+)?[a-z_\[][\w.\[\]| ,<>]*?[ \t]*=(?!=))?)[ \t]*" + _VALUE
)
# A name and its value with only blanks between: a quoted value (`storePassword "..."` in a Groovy or Kotlin DSL,
# `PASSWORD '...'` in SQL, `password '...'` in a Ruby call without parentheses) or, on a line of blank-separated
# key-value pairs (netrc, redis.conf, sshd_config), a bare one.
_SPACED_PAIR = re.compile(rf"(?P<name>(?:{_KEYWORD})[\w.-]*)[ \t]+" + _VALUE)
_PAIR_TOKENS = re.compile(r"[^\s]+")
# A YAML block scalar's header (`password: |`, `secret: >-`): the value is the more indented line below.
_BLOCK_HEADER = re.compile(r"[|>][-+]?\d?")
_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789_.-")
# What may stand before a name that starts a config line: `export X=`, `- X=` (compose),
# `ENV X=`/`ARG X=` (Dockerfile), `set X=` (batch), a quote (`"x": 1` in JSON).
_LINE_PREFIX = re.compile(r"[ \t]*(?:export[ \t]+|-[ \t]+|env[ \t]+|arg[ \t]+|set[ \t]+)?[\"']?")
_LINE_REST = re.compile(r"[ \t]*(?:#.*)?\r?")
# Where an unquoted value ends inside a line: a connection string's `;` (`Pwd=a&b,c;Server=`),
# a query string's `&` (`?password=...&`), else an argument's end (`f(pw=...)`). Passwords hold
# `&`, `,` and `)`: each ends a value only where it is the syntax's separator.
_INLINE_END = re.compile(r"[;,)\]}]")
_NEXT_PAIR = re.compile(r";(?:[\w ]+=|$)")


def _inline_end(text: str, name_start: int, vstart: int, vend: int) -> int:
    """Where an unquoted value in the middle of a line ends (``vend`` when it runs on)."""
    if pair := _NEXT_PAIR.search(text, vstart, vend):  # a connection string: `;` then the next pair
        return pair.start()
    end = vend
    if text[name_start - 1 : name_start] in ("?", "&") and (amp := text.find("&", vstart, vend)) != -1:
        end = amp  # a query string
    cut = _INLINE_END.search(text, vstart, end)
    return cut.start() if cut else end


def _name_start(low: str, pos: int) -> int:
    start = pos
    while start > 0 and pos - start < 64 and low[start - 1] in _NAME_CHARS:
        start -= 1
    return start


def find_assigned_secrets(text: str, low: str, keywords: list[int]) -> Iterator[Span]:
    """Values assigned to names of secrets (``DB_PASSWORD=...``, ``"api_key": "..."``, ``token: ...``).

    ``keywords``: where names of secrets start in ``low``; assignments and calls share that scan.
    """
    pos = 0
    for keyword in keywords:
        if keyword < pos:
            continue
        spaced = False
        if (m := _ASSIGNMENT.match(low, keyword)) is None:
            if (m := _SPACED_PAIR.match(low, keyword)) is None:
                continue
            spaced = True
        group = next(g for g in ("dq", "sq", "bq", "bare") if m.group(g) is not None)
        vstart, vend = m.span(group)
        pos = vstart  # a value may hold the next assignment: `SharedAccessKeyName=x;SharedAccessKey=...`
        start = _name_start(low, m.start())
        kind = _secret_kind(text[start : m.end("name")])
        if kind is None:
            continue
        if group == "bare" and _BLOCK_HEADER.fullmatch(low, vstart, vend):
            if (block := _block_scalar_line(low, start, vend)) is None:
                continue
            (vstart, vend), group, spaced = block, "block", False
        if (
            spaced
            and (
                group == "bq"  # prose quoting code: "pass `reconnect=False`"
                or low[start : m.end("name")] == "pass"  # the verb, in prose: "pass the token"
                or (group == "bare" and not _in_pair_record(low, start, vend))
            )
        ):
            continue
        if group == "bare":
            line_start = low.rfind("\n", 0, start) + 1
            line_end = low.find("\n", vend)
            config_line = _LINE_PREFIX.fullmatch(low, line_start, start) and _LINE_REST.fullmatch(
                low, vend, len(low) if line_end == -1 else line_end
            )
            if not config_line or text[vend - 1] in ",);":
                vend = _inline_end(text, start, vstart, vend)
        if _is_secret(text[vstart:vend], kind, data=group != "bare" or bool(config_line)):
            pos = vend
            yield Span(vstart, vend, kind)


def _line_bounds(low: str, pos: int) -> tuple[int, int]:
    """Where the line holding ``pos`` starts and ends (its newline excluded)."""
    end = low.find("\n", pos)
    return low.rfind("\n", 0, pos) + 1, len(low) if end == -1 else end


def _in_pair_record(low: str, name_start: int, vend: int) -> bool:
    """Is the name at ``name_start`` a key of a line of blank-separated key-value pairs, with its value ending
    at ``vend``: an even number of tokens before it on its line, none of them a comment's start, and only whole
    pairs (or a comment) after?"""
    line_start, line_end = _line_bounds(low, name_start)
    before = _PAIR_TOKENS.findall(low, line_start, name_start)
    rest = _PAIR_TOKENS.findall(low[vend:line_end].split("#", 1)[0])
    commented = any(token.startswith(("#", "//", "/*", "*", ";", "--")) for token in before)
    return len(before) % 2 == 0 and len(rest) % 2 == 0 and not commented


def _block_scalar_line(low: str, name_start: int, header_end: int) -> tuple[int, int] | None:
    """The span of a YAML block scalar's value when it is one line, more indented than its key's line (the value of
    `password: >-` on the next line); None for a longer block (prose, a certificate) or none."""
    line_start, line_end = _line_bounds(low, name_start)
    if low[header_end:line_end].strip() or line_end >= len(low):
        return None
    indent = len(low[line_start:name_start]) - len(low[line_start:name_start].lstrip(" "))
    first = line_end + 1
    first_end = _line_bounds(low, first)[1]
    body = low[first:first_end]
    depth = len(body) - len(body.lstrip(" "))
    after = low[first_end + 1 : _line_bounds(low, first_end + 1)[1]] if first_end < len(low) else ""
    if depth <= indent or not body.strip() or (after.strip() and len(after) - len(after.lstrip(" ")) >= depth):
        return None
    return first + depth, first_end - (len(body) - len(body.rstrip()))


# Secrets passed to calls, matched in the lower-cased text:
# - setters, builders and constructors named after a secret (`setPassword("...")`, `.apiKey("...")`,
#   `new NetworkCredential("user", "...")`, `new PasswordAuthentication("user", "...".toCharArray())`)
#   and calls that log in or create a user (`ftp.login("user", "...")`, `HTTPBasicAuth(u, "...")`,
#   `create_superuser("admin", "", "...")`): their last argument, when a string literal; with
#   several arguments only a password's or credential's (`SecretKeySpec(key, "HmacSHA256")` is not);
# - a secret's name and its value as a call's first two arguments (`define('DB_PASSWORD', '...')`,
#   `os.environ.setdefault("API_KEY", "...")`, `props.setProperty("mail.smtp.password", "...")`).
_LOGIN_WORDS = (
    "login",
    "log_in",
    "logon",
    "log_on",
    "signin",
    "sign_in",
    "basicauth",
    "basic_auth",
    "digestauth",
    "digest_auth",
    "create_user",
    "create_superuser",
)
_LOGIN_CALL = "|".join(_LOGIN_WORDS)
_CALL_ARGS = re.compile(r"\w*[ \t]*\((?P<args>(?:[^()\n]|\([^()\n]*\))*)\)")
_LOGIN_CALL_RX = re.compile(rf"(?:{_LOGIN_CALL})(?={_CALL_ARGS.pattern})")
_LOGIN_CALL_NAME = re.compile(rf"\w*(?:{_LOGIN_CALL})")
_LAST_LITERAL = re.compile(r"(?:(?<=\()|,)[ \t]*(?P<q>[\"'])(?P<v>[^\"'\n]*)(?P=q)(?:\.\w+\(\))?[ \t]*$")
_LITERAL = re.compile(r"\"[^\"\n]*\"|'[^'\n]*'|\([^()\n]*\)")  # what may hide an argument's commas
_SETTER_PREFIXES = frozenset(("set", "with", "put"))
_NAME_THEN_VALUE = re.compile(
    r"\([ \t]*(?P<q1>[\"'])(?P<name>[\w.-]+)(?P=q1)[ \t]*,[ \t]*(?P<q>[\"'])(?P<v>[^\"'\n]*)(?P=q)[ \t]*[,)]"
)


def _call_kind(fn: str, low: str, fn_start: int, n_args: int) -> str | None:
    """The kind of secret that the last argument of a call of ``fn`` is, or None."""
    low_fn = fn.lower()
    if n_args >= 2 and _LOGIN_CALL_NAME.fullmatch(low_fn):
        return "password"
    kind = _secret_kind(fn)
    words = [w.lower() for w in _NAME_WORD.findall(fn)]
    constructor = low.endswith("new ", 0, fn_start)
    if kind is None or not (words[0] in _SETTER_PREFIXES or constructor or _KEYWORD_RX.match(low_fn)):
        return None
    if n_args == 1:
        return kind
    return "password" if kind == "password" or "credential" in low_fn else None


def find_call_secrets(text: str, low: str, keywords: list[int]) -> Iterator[Span]:
    """Passwords and keys passed as arguments to setters, constructors, logins and ``define``-like calls.

    ``keywords``: where names of secrets start in ``low``.
    """
    starts = keywords
    if any(w in low for w in _LOGIN_WORDS):
        starts = sorted({*keywords, *(m.start() for m in _LOGIN_CALL_RX.finditer(low))})
    for start in starts:
        if (m := _CALL_ARGS.match(low, start)) is None:
            continue
        literal = _LAST_LITERAL.search(low, m.start("args"), m.end("args"))
        if literal is None:
            continue
        fn_start = start
        while fn_start > 0 and (low[fn_start - 1].isalnum() or low[fn_start - 1] == "_"):
            fn_start -= 1
        n_args = _LITERAL.sub("", m.group("args")).count(",") + 1
        kind = _call_kind(text[fn_start : m.start("args")].rstrip(" \t("), low, fn_start, n_args)
        if kind is not None and _is_secret(text[literal.start("v") : literal.end("v")], kind):
            yield Span(literal.start("v"), literal.end("v"), kind)
    for m in _NAME_THEN_VALUE.finditer(low):
        if span := _named_secret(text, m):
            yield span


# `scheme://user:password@host`: the password may hold `%`-escapes and punctuation, even an
# unescaped `@`, `#` or `?` (the host follows the last `@`); `/` ends the authority.
_URL_CREDENTIALS = re.compile(r"\b[a-zA-Z][a-zA-Z0-9+.-]*://[^\s:/@'\"?#]*:([^\s/'\"]+)@(?=[\w\[.-])")
# Go's database/sql DSNs have no scheme: `user:password@tcp(host:3306)/db`, `@unix(/path)`.
_GO_DSN = re.compile(r"(?<![\w.:/-])[\w.-]*:([^\s'\"`]+?)@(?:tcp6?|udp|unix)\(")


def find_url_passwords(text: str) -> Iterator[Span]:
    """Passwords in URLs (``postgres://user:p%40ss!word@host``) and Go DSNs (``user:pw@tcp(host)/db``)."""
    found: list[re.Match[str]] = []
    if "://" in text:
        found += _URL_CREDENTIALS.finditer(text)
    if "@tcp" in text or "@unix(" in text or "@udp(" in text:
        found += _GO_DSN.finditer(text)
    for m in found:
        if _credential_like(m.group(1), "password"):
            yield Span(m.start(1), m.end(1), "password")


# Credentials on command lines, matched in the lower-cased text: the client's own flags
# (`mysql -pS3cr3t`, glued: `-p DB` is a prompt and a database), `curl -u user:pw`,
# `sshpass -p`, `docker login -p`, `redis-cli -a`, `net use ... /user:name pw` (`*` prompts),
# `sqlplus user/pw@db`, and long options given a separate value (`--password pw`, `--requirepass pw`).
# `[^\n]` or a `\`-continued line: a command may span lines.
_COMMAND_ARGS = r"(?:[^\n\\]|\\\r?\n)*?[ \t]"
_COMMAND_LINE_SECRETS: tuple[tuple[tuple[str, ...], re.Pattern[str]], ...] = (
    (("mysql", "mariadb"), re.compile(rf"\b(?:mysql\w*|mariadb[\w-]*)\b{_COMMAND_ARGS}-p([\"']?)(?P<v>[^\s\"']+)\1")),
    (("curl",), re.compile(rf"\bcurl\b{_COMMAND_ARGS}(?:-u|--user)[ \t]*([\"']?)[^\s:\"']*:(?P<v>[^\s\"']+)\1")),
    (
        ("sshpass", "login"),
        re.compile(rf"\b(?:sshpass|login)\b{_COMMAND_ARGS}(?:-p|--password)[ \t]*([\"']?)(?P<v>[^\s\"'-][^\s\"']*)\1"),
    ),
    (("redis-cli",), re.compile(rf"\bredis-cli\b{_COMMAND_ARGS}-a[ \t]+([\"']?)(?P<v>[^\s\"'-][^\s\"']*)\1")),
    # Windows: `\\server\share` holds backslashes, and a line ends the command.
    (("net use",), re.compile(r"\bnet[ \t]+use\b[^\n]*?[ \t]/user:[^\s/]+[ \t]+([\"']?)(?P<v>[^\s\"'/*][^\s\"']*)\1")),
    (("sqlplus",), re.compile(r"\bsqlplus\b(?:[ \t]+-\w+)*[ \t]+[\"']?[\w$#.-]+/(?P<v>[^\s\"'@/]+)")),
)
# The quote is a named group: `_KEYWORD` holds a group of its own.
_LONG_OPTION = re.compile(rf"--(?P<name>[a-z-]*(?:{_KEYWORD})[a-z-]*)[ \t]+(?P<q>[\"']?)(?P<v>[^\s\"'-][^\s\"']*)(?P=q)")


def find_command_line_secrets(text: str, low: str) -> Iterator[Span]:
    """Passwords and tokens passed as command-line arguments."""
    for needles, rx in _COMMAND_LINE_SECRETS:
        if any(n in low for n in needles):
            for m in rx.finditer(low):
                if _credential_like(text[m.start("v") : m.end("v")], "password"):
                    yield Span(m.start("v"), m.end("v"), "password")
    if "--" in low:
        for m in _LONG_OPTION.finditer(low):
            if span := _named_secret(text, m):
                yield span


# `Authorization: Basic <base64 of user:password>` / `Bearer <token>`, in headers, curl
# commands and code. Basic's value is decoded, so `user:pass` from the docs survives.
_AUTH_SCHEME = re.compile(r"\b(basic|bearer)[ \t]+([a-z0-9._~+/-]+=*)")
# Docker's `config.json` (`"auths": {"registry": {"auth": "<base64 of user:password>"}}`) and
# npm's `_auth`: the same credential as Basic's, under a name of its own.
_AUTH_FIELD = re.compile(r"(?<![\w-])_?auth[\"']?[ \t]*[:=][ \t]*[\"']?([A-Za-z0-9+/]{8,}=*)")


def _basic_credential(value: str) -> str | None:
    """The password of a Basic credential, or None when ``value`` is not base64 of ``user:password``."""
    decoded = _base64_text(value + "=" * (-len(value) % 4))  # headers often drop the padding
    return decoded.partition(":")[2] if decoded is not None and ":" in decoded else None


def find_auth_headers(text: str, low: str) -> Iterator[Span]:
    """Credentials of HTTP ``Authorization`` schemes (Basic, Bearer) and Docker/npm ``auth`` fields."""
    if '"auth"' in low or "_auth" in low:
        for m in _AUTH_FIELD.finditer(text):
            password = _basic_credential(m.group(1))
            if password is not None and _credential_like(password, "password"):
                yield Span(m.start(1), m.end(1), "password")
    if "basic" not in low and "bearer" not in low:
        return
    for m in _AUTH_SCHEME.finditer(low):
        value = text[m.start(2) : m.end(2)]
        if m.group(1) == "basic":
            password = _basic_credential(value)
            if password is not None and _credential_like(password, "password"):
                yield Span(m.start(2), m.end(2), "password")
        elif _credential_like(value, "key"):
            yield Span(m.start(2), m.end(2), "key")


# Dockerfile `ENV NAME value` (the legacy form without `=`; `ENV NAME=value` is an assignment)
# and the same `NAME value` directive in redis.conf (`requirepass`, `masterauth`).
_DIRECTIVE = re.compile(
    r"^[ \t]*(?:env[ \t]+(?P<name>[a-z_]\w*)|(?P<redis>requirepass|masterauth))[ \t]+(?P<q>[\"']?)(?P<v>[^\s\"'=]+)(?P=q)[ \t]*\r?$",
    re.MULTILINE,
)
# XML: `<password>...</password>`, `<Pass encoding="base64">...</Pass>` (FileZilla), `<add key="ApiKey"
# value="..."/>`, `<property name="password" value="..."/>` and `<property name="...password">...</property>`.
_XML_ELEMENT = re.compile(rf"<(?P<name>[\w:.-]*(?:{_KEYWORD})[\w.-]*)(?P<attrs>[ \t][^<>]*)?>(?P<v>[^<\s]+)</(?P=name)>")
_XML_NAME_VALUE = re.compile(r"\b(?:key|name)=[\"'](?P<name>[\w.:-]+)[\"'][ \t]+value=[\"'](?P<v>[^\"'\s]*)[\"']")
_XML_NAMED_ELEMENT = re.compile(
    r"<(?P<tag>[\w:.-]+)[ \t][^<>]*?\b(?:key|name)=[\"'](?P<name>[\w.:-]+)[\"'][^<>]*>(?P<v>[^<\s]+)</(?P=tag)>"
)
# Name/value pairs: Kubernetes env lists (`- name: DB_PASSWORD` then `value: ...`), ECS task
# definitions and Postman collections (`{"key": "token", "value": "..."}`).
_NAME_VALUE_PAIR = re.compile(
    r"\b(?:name|key)[\"']?[ \t]*:[ \t]*[\"']?(?P<name>[\w.-]+)[\"']?[ \t]*(?:,|\r?\n)[ \t]*"
    r"[\"']?value[\"']?[ \t]*:[ \t]*(?:\"(?P<dq>[^\"\n]*)\"|'(?P<sq>[^'\n]*)'|(?P<bare>[^\s\"',}]+))"
)


def _base64_text(value: str) -> str | None:
    """``value`` decoded when it is base64 of printable ASCII, else None."""
    try:
        decoded = base64.b64decode(value, validate=True).decode("ascii")
    except (ValueError, UnicodeDecodeError):
        return None
    return decoded if decoded.isprintable() else None


# SQL's `CREATE USER ... IDENTIFIED BY '...'` and `ALTER USER ... IDENTIFIED BY "..."` (MySQL, Oracle, MariaDB): the
# password follows words that are no secret's name. (`WITH PASSWORD '...'` is a name and its value: see above.)
_SQL_IDENTIFIED_BY = re.compile(r"\bidentified[ \t]+by[ \t]+(?:password[ \t]+)?(?P<q>['\"])(?P<v>[^'\"\n]*)(?P=q)")


def find_sql_passwords(text: str, low: str) -> Iterator[Span]:
    """Passwords SQL sets with `IDENTIFIED BY '...'`."""
    for m in _SQL_IDENTIFIED_BY.finditer(low):
        if _is_secret(text[m.start("v") : m.end("v")], "password"):
            yield Span(m.start("v"), m.end("v"), "password")


def find_config_secrets(text: str, low: str) -> Iterator[Span]:
    """Secrets in ``NAME value`` directives, XML elements and attributes, and name/value pairs."""
    found: list[re.Match[str]] = []
    if "env" in low or "requirepass" in low or "masterauth" in low:
        found += _DIRECTIVE.finditer(low)
    if "</" in low:
        found += _XML_ELEMENT.finditer(low)
        if "name=" in low or "key=" in low:
            found += _XML_NAMED_ELEMENT.finditer(low)
    if "value=" in low:
        found += _XML_NAME_VALUE.finditer(low)
    if "value:" in low or 'value":' in low or "value':" in low:
        found += _NAME_VALUE_PAIR.finditer(low)
    for m in found:
        group = next(g for g in ("v", "dq", "sq", "bare") if g in m.re.groupindex and m.group(g) is not None)
        start, end = m.span(group)
        kind = "password" if m.re is _DIRECTIVE and m.group("redis") else _secret_kind(text[m.start("name") : m.end("name")])
        value = text[start:end]
        if m.re is _XML_ELEMENT and m.group("attrs") and "base64" in m.group("attrs"):
            value = _base64_text(value) or value  # FileZilla's `<Pass encoding="base64">`: judge the password itself
        if kind is not None and _is_secret(value, kind):
            yield Span(start, end, kind)


# Kubernetes `kind: Secret`: every value under `data:` (base64) and `stringData:` is a secret
# by declaration, whatever its name; block scalars (`|`) are left to the other finders.
_K8S_SECRET = re.compile(r"^kind:[ \t]*[\"']?Secret[\"']?[ \t]*\r?$", re.MULTILINE)
_K8S_DOCUMENT = re.compile(r"^---[^\n]*\n", re.MULTILINE)
_K8S_DATA_BLOCK = re.compile(r"^([ \t]*)(?:data|stringData):[ \t]*\r?\n((?:\1[ \t]+\S[^\n]*\n?|[ \t]*\r?\n)*)", re.MULTILINE)
_K8S_ITEM = re.compile(r"^([ \t]+)[\w.-]+:[ \t]*([\"']?)([^\s\"'|>][^\n]*?)\2[ \t]*\r?$", re.MULTILINE)


def find_kubernetes_secret_data(text: str) -> Iterator[Span]:
    """Values of ``data`` and ``stringData`` in Kubernetes Secret manifests."""
    if "Secret" not in text or not _K8S_SECRET.search(text):
        return
    bounds = [0, *(m.end() for m in _K8S_DOCUMENT.finditer(text)), len(text)]
    for doc_start, doc_end in zip(bounds, bounds[1:]):
        if not _K8S_SECRET.search(text, doc_start, doc_end):
            continue
        for block in _K8S_DATA_BLOCK.finditer(text, doc_start, doc_end):
            items = list(_K8S_ITEM.finditer(text, block.start(2), block.end(2)))
            depth = min((len(m.group(1)) for m in items), default=0)
            for m in items:
                if len(m.group(1)) == depth and not _TEMPLATE.search(m.group(3)):
                    yield Span(m.start(3), m.end(3), "key")


# Private keys in PEM armour, also inside JSON strings (`\n` escapes, as in GCP service-account
# files) and string concatenations. The body must hold base64 (a run of 16+ characters) and no
# other armour line: code that only tests for the header (`data.startswith("-----BEGIN RSA
# PRIVATE KEY-----")`) survives, and so does a public key further down.
_PEM_BODY_CHARS = r"[A-Za-z0-9+/=\s\\\"',:-]"
_PRIVATE_KEY_BLOCK = re.compile(
    rf"-----BEGIN ((?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?)-----((?:(?!-----){_PEM_BODY_CHARS})*?)(?:-----END \1-----|(?!{_PEM_BODY_CHARS}))"
)
_BASE64_RUN = re.compile(r"[A-Za-z0-9+/]{16,}")


def find_private_keys(text: str) -> Iterator[Span]:
    """PEM private key blocks (RSA, EC, DSA, OpenSSH, PKCS#8, PGP)."""
    if "PRIVATE KEY" not in text:
        return
    for m in _PRIVATE_KEY_BLOCK.finditer(text):
        if _BASE64_RUN.search(m.group(2)):
            yield Span(m.start(), m.end(), "key")


# Tokens recognised by their format: detect-secrets' token detectors plus formats it lacks or
# matches only in part (Stripe keys are now ~100 characters, a JWT's signature, OpenAI project
# keys, fine-grained GitHub tokens, Discord tokens' 38-character HMAC, Mailgun, Shopify). Each
# regex runs only on files holding one of its literals: a substring test
# costs ~1% of a regex scan, and most files hold none of them.
_TOKEN_FORMATS: tuple[tuple[tuple[str, ...], Sequence[re.Pattern[str]]], ...] = (
    (("A3T", "ABIA", "ACCA", "AKIA", "ASIA"), aws.AWSKeyDetector.denylist[:1]),
    (("aws", "AWS", "Aws"), aws.AWSKeyDetector.denylist[1:]),  # `aws_secret = "<40 chars>"`
    (("ghp_", "gho_", "ghu_", "ghs_", "ghr_"), github_token.GitHubTokenDetector.denylist),
    (("github_pat_",), (re.compile(r"\bgithub_pat_[0-9A-Za-z_]{82}\b"),)),
    (("gl", "GR1348941"), gitlab_token.GitLabTokenDetector.denylist),
    (("eyJ",), (re.compile(r"\beyJ[A-Za-z0-9_=-]+\.[A-Za-z0-9_=-]+\.[A-Za-z0-9_=+/-]*"),)),  # JWT, signature included
    (("xox", "hooks.slack.com"), slack.SlackDetector.denylist),
    (("k_live_", "k_test_"), (re.compile(r"\b[rs]k_(?:live|test)_[0-9A-Za-z]{16,}"),)),  # `pk_` keys are public
    (("T3BlbkFJ",), openai.OpenAIDetector.denylist),
    (
        ("sk-proj-", "sk-svcacct-", "sk-admin-", "sk-ant-"),
        (re.compile(r"\bsk-(?:proj|svcacct|admin|ant-\w+)-[A-Za-z0-9_-]{32,}"),),
    ),
    (("_authToken",), npm.NpmDetector.denylist),
    (("npm_",), (re.compile(r"\bnpm_[A-Za-z0-9]{36}\b"),)),
    (("pypi-",), pypi_token.PypiTokenDetector.denylist),
    (("SG.",), sendgrid.SendGridDetector.denylist),
    (("sq0",), square_oauth.SquareOAuthDetector.denylist),
    (("-us",), mailchimp.MailchimpDetector.denylist),
    (("AC", "SK"), twilio.TwilioKeyDetector.denylist),
    (("AIza",), (re.compile(r"AIza[0-9A-Za-z_-]{35}"),)),  # Google API key
    (("hf_",), (re.compile(r"\bhf_[A-Za-z]{34}\b"),)),  # Hugging Face token
    (("key-",), (re.compile(r"\bkey-[0-9a-f]{32}\b"),)),  # Mailgun API key
    (("shpat_", "shpss_", "shpca_", "shppa_"), (re.compile(r"\bshp(?:at|ss|ca|pa)_[0-9a-fA-F]{32}\b"),)),  # Shopify
    ((":",), telegram_token.TelegramBotTokenDetector.denylist),
    # Discord bot token: base64 of the bot's id, a timestamp, an HMAC of 27 (old) or 38 characters.
    ((".",), (re.compile(r"(?<![\w-])[MNO][\w-]{23,25}\.[\w-]{6}\.[\w-]{27,38}(?![\w-])"),)),
)
# A format match with a masked body (`sk_live_xxxxxxxx...`, `ghp_****`) is documentation.
_MASKED = re.compile(r"[xX]{6}|\*{4}|0{8}|\.\.\.")


def _secret_group(m: re.Match[str]) -> tuple[int, int]:
    # Replace the captured secret when a regex captures one (context regexes such as
    # `aws...key = "..."`), else the whole match (`ghp_...` captures only its prefix).
    for g in range(m.re.groups, 0, -1):
        if m.group(g) is not None and len(m.group(g)) >= 8:
            return m.span(g)
    return m.span(0)


def find_token_formats(text: str) -> Iterator[Span]:
    """Keys and tokens of known formats (AWS, GitHub, GitLab, Slack, Stripe, JWT, OpenAI, npm, ...)."""
    for needles, patterns in _TOKEN_FORMATS:
        if any(n in text for n in needles):
            for rx in patterns:
                for m in rx.finditer(text):
                    start, end = _secret_group(m)
                    if not _MASKED.search(text, start, end):
                        yield Span(start, end, "key")


_ASCII_LOWER = str.maketrans(string.ascii_uppercase, string.ascii_lowercase)


def find_secrets(text: str) -> Iterator[Span]:
    """Keys (kind ``key``) and passwords (kind ``password``) wherever code and config leak them."""
    low = text.lower()
    if len(low) != len(text):  # a few non-ASCII characters change length when lower-cased
        low = text.translate(_ASCII_LOWER)
    yield from find_private_keys(text)
    yield from find_token_formats(text)
    yield from find_kubernetes_secret_data(text)
    keywords = [m.start() for m in _KEYWORD_RX.finditer(low)]
    yield from find_assigned_secrets(text, low, keywords)
    yield from find_call_secrets(text, low, keywords)
    yield from find_url_passwords(text)
    yield from find_command_line_secrets(text, low)
    yield from find_auth_headers(text, low)
    yield from find_config_secrets(text, low)
    yield from find_sql_passwords(text, low)


# When spans overlap, the more specific kind wins: `user:pw@host` is a password in a URL,
# not an email address starting at the password.
_PRIORITY = {"key": 0, "password": 1, "email": 2, "ip_address": 3}


def find_pii(text: str, cfg: PIIConfig) -> list[Span]:
    """All PII spans of the enabled kinds, non-overlapping, in text order."""
    spans: list[Span] = []
    if cfg.keys or cfg.passwords:
        spans += (s for s in find_secrets(text) if (cfg.keys if s.kind == "key" else cfg.passwords))
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
