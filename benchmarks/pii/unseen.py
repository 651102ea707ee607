"""Secret families written after data/pii.py's rules, to measure how the detector generalises (issue 32).

Written on 2026-12-07 (fifth session) before any rule was changed for them: neither benchmarks/pii/cases.py nor
any issue or test names these families. Their recall is reported apart from the labelled set's
(benchmarks/pii_bench.py, "unseen"), because rules must not be fitted to them: a family that a later rule was
written for moves into cases.py, and new unseen families are written here first.

The same conventions as cases.py: ``secrets`` must be redacted (every character of every occurrence), ``keep`` must
survive untouched, and a case without secrets must come out byte-identical. Every value is random and fake.
"""

from __future__ import annotations

from benchmarks.pii.cases import Case, case

UNSEEN: list[Case] = [
    case(
        "pgpass",
        "pgpass_lines",
        """\
# hostname:port:database:username:password
db.internal:5432:orders:reporter:Rp4!xQ9z-Lm2Vt
*:*:*:replicator:Xr7Kp2Wq9Lz4Mn8B
localhost:5432:*:postgres:postgres
""",
        secrets=("Rp4!xQ9z-Lm2Vt", "Xr7Kp2Wq9Lz4Mn8B"),
        keep=("db.internal:5432:orders:reporter", "localhost:5432:*:postgres:postgres"),
    ),
    case(
        "php_arrays",
        "laravel_style_config",
        """\
<?php

return [
    'default' => env('DB_CONNECTION', 'mysql'),
    'connections' => [
        'mysql' => [
            'host' => '10.0.3.12',
            'username' => 'shop',
            'password' => 'Sh0p-9xKq2Lm7Vt',
        ],
    ],
    'mail' => ['secret' => env('MAILER_SECRET')],
    'stripe' => ['client_secret' => 'cs_9Kq2Lm7Vt4Xz8Rw1Nb5Hd3'],
];
""",
        secrets=("Sh0p-9xKq2Lm7Vt", "cs_9Kq2Lm7Vt4Xz8Rw1Nb5Hd3"),
        keep=("env('MAILER_SECRET')", "env('DB_CONNECTION', 'mysql')"),
    ),
    case(
        "redis_conf",
        "requirepass_and_masterauth",
        """\
bind 127.0.0.1
port 6379
requirepass Vq7Lm2Xz9Kw4Rt8N
masterauth Hb3Nz8Lq2Wx7Km5R
maxmemory-policy allkeys-lru
""",
        secrets=("Vq7Lm2Xz9Kw4Rt8N", "Hb3Nz8Lq2Wx7Km5R"),
        keep=("allkeys-lru",),
    ),
    case(
        "npmrc",
        "registry_auth_tokens",
        """\
registry=https://npm.internal.acme.dev/
//npm.internal.acme.dev/:_authToken=a8d2f7c1-4b9e-4e3a-9c71-5f2d8b6e0a43
//registry.yarnpkg.com/:_password=WXo3TFd6OGtRMnY5
always-auth=true
""",
        secrets=("a8d2f7c1-4b9e-4e3a-9c71-5f2d8b6e0a43", "WXo3TFd6OGtRMnY5"),
        keep=("https://npm.internal.acme.dev/",),
    ),
    case(
        "powershell",
        "secure_strings_and_credentials",
        """\
$User = "svc-deploy"
$Secure = ConvertTo-SecureString "Pw9!zKq2Lx7Vm4Rt" -AsPlainText -Force
$Cred = New-Object System.Management.Automation.PSCredential($User, $Secure)
$Token = Get-Content -Path $env:TOKEN_FILE
Invoke-RestMethod -Uri $Uri -Headers @{ "X-Api-Key" = "Xk4Lm9Qz2Wv7Rt8N3b" }
""",
        secrets=("Pw9!zKq2Lx7Vm4Rt", "Xk4Lm9Qz2Wv7Rt8N3b"),
        keep=("$env:TOKEN_FILE", '"svc-deploy"'),
    ),
    case(
        "ansible_inventory",
        "hosts_ini",
        """\
[web]
web1.internal ansible_user=deploy ansible_password=Dp8!kQ2xLm7Vz4Rt
web2.internal ansible_user=deploy ansible_become_pass=Bc3Nz9Lq2Wx7Km5R

[db:vars]
ansible_ssh_pass="{{ vault_db_ssh_pass }}"
""",
        secrets=("Dp8!kQ2xLm7Vz4Rt", "Bc3Nz9Lq2Wx7Km5R"),
        keep=('"{{ vault_db_ssh_pass }}"',),
    ),
    case(
        "elixir_config",
        "repo_and_endpoint",
        """\
import Config

config :shop, Shop.Repo,
  username: "shop",
  password: "Ex7!qLz2Wm9Kv4Rt",
  hostname: "db.internal"

config :shop, ShopWeb.Endpoint,
  secret_key_base: "Lq9Xz2Wm7Kv4Rt8Nb3Hd5Fs1Gc6Jp0Ya2Ue7Io4Qw9Er3Ty8Ui5Op1As6Df2Gh7Jk3Lz",
  live_view: [signing_salt: System.get_env("SIGNING_SALT")]
""",
        secrets=("Ex7!qLz2Wm9Kv4Rt", "Lq9Xz2Wm7Kv4Rt8Nb3Hd5Fs1Gc6Jp0Ya2Ue7Io4Qw9Er3Ty8Ui5Op1As6Df2Gh7Jk3Lz"),
        keep=('System.get_env("SIGNING_SALT")', '"db.internal"'),
    ),
    case(
        "python_auth_tuples",
        "requests_and_bytes",
        """\
import requests
from flask import Flask

app = Flask(__name__)
app.secret_key = b"Fl9!kQ2xLm7Vz4Rt8Wb3"

resp = requests.get(URL, auth=("ci-bot", "Ab7Kq2Lx9Vm4Rt8Nz3"), timeout=10)
other = requests.get(URL, auth=(user, password))
""",
        secrets=("Fl9!kQ2xLm7Vz4Rt8Wb3", "Ab7Kq2Lx9Vm4Rt8Nz3"),
        keep=("auth=(user, password)", '"ci-bot"'),
    ),
    case(
        "url_tokens",
        "query_and_fragment",
        """\
WEBHOOK = "https://hooks.acme.dev/notify?channel=ops&access_token=Wq8Lx2Km9Vz4Rt7Nb3Hd"
CALLBACK = "https://app.acme.dev/oauth/callback#id_token=Id4Nz8Lq2Wx7Km5Rb9Vt&state=abc"
DOCS = "https://docs.acme.dev/search?q=token&page=2"
""",
        secrets=("Wq8Lx2Km9Vz4Rt7Nb3Hd", "Id4Nz8Lq2Wx7Km5Rb9Vt"),
        keep=('"https://docs.acme.dev/search?q=token&page=2"',),
    ),
    case(
        "http_schemes",
        "token_and_custom_headers",
        """\
GET /v1/builds HTTP/1.1
Host: ci.acme.dev
Authorization: Token 9fK2qLx7Vm4Rt8Nw1Zc6Hb3
X-Api-Key: Ak5Nz8Lq2Wx7Km3Rb9Vt4Hd
Accept: application/json
""",
        secrets=("9fK2qLx7Vm4Rt8Nw1Zc6Hb3", "Ak5Nz8Lq2Wx7Km3Rb9Vt4Hd"),
        keep=("application/json", "ci.acme.dev"),
    ),
    case(
        "escaped_json",
        "json_inside_strings",
        """\
SETTINGS = "{\\"db_password\\": \\"Js8!kQ2xLm7Vz4Rt\\", \\"pool\\": 5}"
env:
  - name: APP_CONFIG
    value: '{"apiSecret": "As3Nz8Lq2Wx7Km5Rb9Vt", "region": "eu-west-1"}'
""",
        secrets=("Js8!kQ2xLm7Vz4Rt", "As3Nz8Lq2Wx7Km5Rb9Vt"),
        keep=('"region": "eu-west-1"',),
    ),
    case(
        "client_constructors",
        "positional_and_keyword",
        """\
import pysftp
import smtplib
from ldap3 import Connection

sftp = pysftp.Connection("files.acme.dev", username="batch", password="Sf7!kQ2xLm9Vz4Rt")
ldap = Connection(server, "cn=admin,dc=acme,dc=dev", "Ld3Nz8Lq2Wx7Km5Rb9")
mail = smtplib.SMTP_SSL("smtp.acme.dev", 465)
""",
        secrets=("Sf7!kQ2xLm9Vz4Rt", "Ld3Nz8Lq2Wx7Km5Rb9"),
        keep=('"cn=admin,dc=acme,dc=dev"', '"smtp.acme.dev"'),
    ),
    # Written on 2026-12-08 (sixth session), after the spaced-pair, annotation and block-scalar syntaxes were added
    # to data/pii.py and before anything was changed for these.
    case(
        "c_defines",
        "preprocessor_constants",
        """\
#define SERVICE_HOST "api.acme.dev"
#define SERVICE_PASSWORD "Cd4!pLx8Wm2Vt6Rz"
#define SIGNING_KEY "Sk9Qw2Lx7Vm4Rt8Nz3Hb"
#define PASSWORD_MAX_LEN 64
""",
        secrets=("Cd4!pLx8Wm2Vt6Rz", "Sk9Qw2Lx7Vm4Rt8Nz3Hb"),
        keep=('"api.acme.dev"', "PASSWORD_MAX_LEN 64"),
    ),
    case(
        "clojure_edn",
        "config_map",
        """\
{:db {:user "svc" :password "Ed7Kq2Lx9Vm4Rt8N"}
 :stripe {:api-key "Cj3Nz8Lq2Wx7Km5Rb9Vt4"}
 :password-field :pw}
""",
        secrets=("Ed7Kq2Lx9Vm4Rt8N", "Cj3Nz8Lq2Wx7Km5Rb9Vt4"),
        keep=(":password-field :pw", ':user "svc"'),
    ),
    case(
        "docker_config_auths",
        "config_json",
        """\
{
  "auths": {
    "registry.acme.dev": {
      "auth": "Y2k6RGs4IXFMeDJXbTlWdDRSeg==",
      "identitytoken": "Dt5Kq9Lx2Wm7Vz4Rb8Nc3Hf6"
    }
  },
  "credsStore": "desktop"
}
""",
        secrets=("Y2k6RGs4IXFMeDJXbTlWdDRSeg==", "Dt5Kq9Lx2Wm7Vz4Rb8Nc3Hf6"),
        keep=('"credsStore": "desktop"', '"registry.acme.dev"'),
    ),
    case(
        "windows_net_user",
        "net_user_commands",
        """\
net user svc_backup Wn6!kQ3xLm8Vz2Rt /add
net user administrator Ad9Lq2Wx7Km5Rb3N
net user guest /active:no
""",
        secrets=("Wn6!kQ3xLm8Vz2Rt", "Ad9Lq2Wx7Km5Rb3N"),
        keep=("net user guest /active:no",),
    ),
    case(
        "unseen_lookalikes",
        "names_that_are_not_secrets",
        """\
PASSWORD_MIN_LENGTH = 12
TOKEN_EXPIRY_SECONDS = 3600
password_hash = bcrypt.hashpw(password.encode(), bcrypt.gensalt())
secret_name = "projects/acme/secrets/db-password/versions/latest"
api_key_header = APIKeyHeader(name="X-API-Key")
requirepass_directive = "requirepass"
CREATE_USER_SQL = "CREATE USER %s WITH PASSWORD %s"
checksum = "sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
""",
    ),
]
