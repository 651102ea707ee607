"""PII redaction: each kind is found, and what only looks like PII is left alone."""

from __future__ import annotations

import pytest

from lathe.data.config import PIIConfig
from lathe.data.pii import redact

ALL = PIIConfig()


def red(text: str) -> tuple[str, dict[str, int]]:
    return redact(text, ALL)


@pytest.mark.parametrize(
    "text, expected, kind",
    [
        ('ADMIN = "jane.doe@acme-corp.com"', 'ADMIN = "<EMAIL>"', "email"),
        ("# Contact: bob+spam@mail.example.org.", "# Contact: <EMAIL>.", "email"),
        ('HOST = "8.8.4.4"', 'HOST = "<IP_ADDRESS>"', "ip_address"),
        ("server 2001:4860:4860::8888 answers", "server <IP_ADDRESS> answers", "ip_address"),
        ('key = "AKIAIOSFODNN7EXAMPLE"', 'key = "<KEY>"', "key"),
        ("token = 'ghp_" + "a1B2" * 9 + "'", "token = '<KEY>'", "key"),
        ('SLACK = "xoxb-123456789012-1234567890123-AbCdEfGhIjKlMnOpQrStUvWx"', 'SLACK = "<KEY>"', "key"),
        ('"client_secret": "9f8e7d6c5b4a39281706f5e4d3c2b1a0"', '"client_secret": "<KEY>"', "key"),
        ("-----BEGIN RSA PRIVATE KEY-----\nMIIEpAIBAAKCAQEA1\nabc\n-----END RSA PRIVATE KEY-----\n", "<KEY>\n", "key"),
        ('url = "https://admin:hunter22@db.example.com/x"', 'url = "https://admin:<PASSWORD>@db.example.com/x"', "password"),
        ('DB_PASSWORD = "Tr0ub4dor&3"', 'DB_PASSWORD = "<PASSWORD>"', "password"),
    ],
)
def test_pii_is_replaced_by_its_placeholder(text: str, expected: str, kind: str) -> None:
    out, counts = red(text)
    assert out == expected
    assert counts[kind] >= 1
    assert sum(counts.values()) == counts[kind]


@pytest.mark.parametrize(
    "text",
    [
        '__version__ = "1.2.3.4"',  # version strings
        "release 10.0.0.1 of the firmware",
        'requires = ["numpy>=1.21.0.0"]',
        "127.0.0.1 localhost",  # loopback
        "bind 10.1.2.3 and 192.168.0.10 and 172.16.5.4",  # private
        "listen on 0.0.0.0 or ::1 or fe80::1",
        "commit 3f7c2a9e5b1d4c6f8a0b2d4e6f8a0c2e4b6d8f0a",  # git SHA
        'digest = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"',  # sha256
        'uid = "123e4567-e89b-12d3-a456-426614174000"',  # UUID
        "@property\ndef name(self): ...",  # decorator
        "@dataclass(frozen=True)",
        'import "@babel/core"; require("@types/node")',  # scoped npm packages
        "npm install lodash@4.17.21",
        "background: url(icon@2x.png)",
        "C = A@B",  # matrix product
        "std::vector<int> v; a::b::c();",
        'password = "${DB_PASSWORD}"',  # template, not a secret
        'token_type = "bearer"',
        "timestamp 12:34:56",
        "id_at_name = univ.ObjectIdentifier('2.5.4.41')",  # ASN.1 OID
        "# https://datatracker.ietf.org/doc/html/rfc7692#section-7.2.3.1",  # section anchor
        "('3.2.pl0', '3.1.1.6', ValueError),",  # a table of versions
        'engine = create_engine("mssql+pyodbc://user:pass@dsn")',  # placeholder credentials
        "gist://username:token@id/file",
    ],
)
def test_things_that_only_look_like_pii_are_kept(text: str) -> None:
    out, counts = red(text)
    assert out == text, counts
    assert sum(counts.values()) == 0


def test_kinds_can_be_disabled_and_counts_add_up() -> None:
    text = 'a = "x@example.com"\nb = "8.8.8.8"\nc = "y@example.com"\n'
    out, counts = redact(text, PIIConfig(ip_addresses=False))
    assert out == 'a = "<EMAIL>"\nb = "8.8.8.8"\nc = "<EMAIL>"\n'
    assert counts == {"email": 2, "ip_address": 0, "key": 0, "password": 0}
