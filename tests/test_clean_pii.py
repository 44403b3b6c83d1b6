"""PII redaction: every kind is replaced and counted; code that only looks like PII is left alone."""

from __future__ import annotations

import base64
from collections import Counter

import pytest

from components.clean.pii import counts_by_kind, find_pii, redact, rules_for

# Built at run time so that no secret-shaped literal sits in the repository.
GITHUB_TOKEN = "ghp_" + "a1B2c3D4e5F6g7H8i9J0k1L2m3N4o5P6q7R8"
SLACK_TOKEN = "xoxb-" + "123456789012-1234567890123-AbCdEfGhIjKlMnOpQrStUvWx"
PEM_BODY = "\n".join(base64.b64encode(bytes(range(7, 250))).decode()[i : i + 64] for i in range(0, 324, 64))
PRIVATE_KEY = "-----BEGIN RSA PRIVATE KEY-----\n" + PEM_BODY + "\n-----END RSA PRIVATE KEY-----"

REDACTED = [
    # (rule, text, expected text)
    ("email", "# Author: Jane Doe <jane.doe@gmail.com>\n", "# Author: Jane Doe <<EMAIL>>\n"),
    ("email", "CONTACT = 'OPS-TEAM@CORP.CO.UK'", "CONTACT = '<EMAIL>'"),
    ("ipv4", 'SERVER = "93.184.216.34"\n', 'SERVER = "<IP_ADDRESS>"\n'),
    ("ipv4", "ssh admin@host 52.14.7.201 -p 22", "ssh admin@host <IP_ADDRESS> -p 22"),
    ("ipv6", "upstream = '2a00:1450:4001:81c::200e'", "upstream = '<IP_ADDRESS>'"),
    ("ipv6", "addr 2001:0db9:85a3:0000:0000:8a2e:0370:7334.", "addr <IP_ADDRESS>."),
    ("aws_access_key_id", "AWS_ACCESS_KEY_ID=AKIAIOSFODNN7EXAMPLE\n", "AWS_ACCESS_KEY_ID=<KEY>\n"),
    (
        "aws_secret_key",
        'aws_secret_access_key = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"',
        'aws_secret_access_key = "<KEY>"',
    ),
    ("github_token", f"token = os.getenv('T', '{GITHUB_TOKEN}')", "token = os.getenv('T', '<KEY>')"),
    ("slack_token", f"client = WebClient({SLACK_TOKEN!r})", "client = WebClient('<KEY>')"),
    (
        "bearer_token",
        'headers = {"Authorization": "Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NSJ9.Xk3p9QzT7w"}',
        'headers = {"Authorization": "Bearer <KEY>"}',
    ),
    ("stripe_key", 'STRIPE_API_KEY = "sk_live_4eC39HqLyjWDarjtT1zdp7dc"', 'STRIPE_API_KEY = "<KEY>"'),
    ("secret_assignment", 'STRIPE_API_KEY = "rk_test_4eC39HqLyjWDarjtT1zdp7dc"', 'STRIPE_API_KEY = "<KEY>"'),
    # Credentials in URLs: the password goes, the scheme, user and host stay (no email rule eats the host).
    (
        "url_credentials",
        'DSN = "postgresql://report:Zx9-Pq4w@db.internal.corp.com:5432/sales"',
        'DSN = "postgresql://report:<KEY>@db.internal.corp.com:5432/sales"',
    ),
    (
        "url_credentials",
        "clone https://deploy:ghs1Kw9@gitlab.com/org/x.git",
        "clone https://deploy:<KEY>@gitlab.com/org/x.git",
    ),
    # A JWT anywhere, not only after Bearer; sk- keys whatever the name they are assigned to.
    (
        "jwt",
        "cookie = 'eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N'",
        "cookie = '<KEY>'",
    ),
    (
        "sk_key",
        'client = OpenAI("sk-proj-Ab3dEfGh1jKlMn0pQrStUvWxYz98765")',
        'client = OpenAI("sk-proj-<KEY>")',
    ),
    ("sk_key", "x = ['sk-Qm4nT8wLz2Xc9Vb1Np7Rk3Hd']", "x = ['sk-<KEY>']"),
    # Token families of the maintained scanners (detect-secrets' patterns) and the ones it lacks.
    (
        "github_fine_grained_token",
        "t = 'github_pat_11AAAAAAA0bcdefghijklmno_pqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789abcdefg'",
        "t = '<KEY>'",
    ),
    ("gitlab_token", "GITLAB = 'glpat-xk29Fj3nQ8vLm2Ps7Rt1'", "GITLAB = '<KEY>'"),
    ("npm_token", "//registry.npmjs.org/:_authToken=npm_a1B2c3D4e5F6g7H8i9J0k1L2m3N4o5P6q7R8", "<KEY>"),
    ("pypi_token", "password = pypi-AgEIcHlwaS5vcmc" + "A" * 70, "password = <KEY>"),
    ("google_api_key", "MAPS_KEY = AIzaSyD-9tSrke72PouQMnMX-a7eZSW0jkFMBWY", "MAPS_KEY = <KEY>"),
    ("openai_key", "k = sk-abcdefghij1234567890T3BlbkFJabcdefghij1234567890", "k = <KEY>"),
    ("secret_assignment", "config = {'password': 'Tr0ub4dor&3xkcd'}", "config = {'password': '<KEY>'}"),
    ("secret_assignment", "cfg['auth_token'] = 'a9F3kQ0zX7pL2m'", "cfg['auth_token'] = '<KEY>'"),
    ("private_key", f'KEY = """{PRIVATE_KEY}"""\nload(KEY)\n', 'KEY = """<KEY>"""\nload(KEY)\n'),
]


@pytest.mark.parametrize(
    ("rule", "text", "expected"), REDACTED, ids=[f"{r[0]}-{i}" for i, r in enumerate(REDACTED)]
)
def test_each_kind_is_redacted_and_counted(rule: str, text: str, expected: str) -> None:
    redacted, counts = redact(text)
    assert redacted == expected
    assert counts == {rule: 1}


KEPT = {
    "decorators": "class A:\n    @property\n    def x(self): ...\n\n@dataclass(frozen=True)\nclass B: ...\n",
    "decorator in text": "use a@property here; @pytest.mark.slow too",
    "matrix multiply": "y = a @ b\nz = x@y\nw = q@k.mT + x@w.T + h@self.W.to(device)\n",
    "dotted matmul": "out = self.weights@self.inputs.T",
    "version strings": '__version__ = "1.2.3.4"\n# version 1.2.3.4\nVERSION: 2.0.11.4\nrequests==2.31.0.1\n',
    "single-digit quad": "expected = ['1.2.3.4', '5.6.7.8']",
    "longer dotted runs": "oid = '1.3.6.1.4.1.311'\nname = '1.0.0.127.in-addr.arpa'",
    "private and documentation ips": "bind('127.0.0.1'); HOST = '192.168.1.10'; doc = '203.0.113.5'",
    "public dns resolvers": "nameservers = ['8.8.8.8', '1.1.1.1']",
    "documentation ipv6": "addr = '2001:db8::1'; local = 'fe80::1'; '::1'",
    "c++ scopes": "std::vector<int> v; std::map<a::b, c::d> m; Foo::Bar::baz();",
    "python slices": "x = a[::2] + b[1:2:3] + c[::-1] + d[10:20]",
    "times and macs": "at 12:30:45 from 00:1a:2b:3c:4d:5e",
    "documentation emails": "mail user@example.com or admin@mail.example.org",
    "ssh remote": "git clone git@github.com:org/repo.git",
    "no tld": "ssh root@localhost; fmt = '%s@%s' % (user, host)",
    "git sha in comment": "# fixed in 3f2a9c1e4b5d6e7f8091a2b3c4d5e6f708192a3b\n",
    "hash assignments": 'sha256 = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"',
    "placeholder secrets": "password = 'changeme'\napi_key = '<your-api-key-here>'\nSECRET_KEY = env['K']",
    "token-like names": "tokenizer_name = 'bigcode/starcoder2-15b'\npad_token = '<|endoftext|>'\n",
    "bearer variable": 'h = "Bearer " + self.configuration.access_token',
    "pem parser constants": 'B = "-----BEGIN RSA PRIVATE KEY-----"\nparse(x)\n'
    'E = "-----END RSA PRIVATE KEY-----"',
}


@pytest.mark.parametrize("text", KEPT.values(), ids=KEPT.keys())
def test_code_that_looks_like_pii_is_kept(text: str) -> None:
    assert redact(text) == (text, {})


def test_counts_per_rule_and_kind_in_one_document() -> None:
    text = (
        "# maintainer: a.b@python.org, c.d@uni.edu\n"
        "HOSTS = ['93.184.216.34', '2a00:1450:4001:81c::200e', '10.0.0.1']\n"
        f"GH = '{GITHUB_TOKEN}'\n"
    )
    redacted, counts = redact(text)
    assert counts == {"email": 2, "ipv4": 1, "ipv6": 1, "github_token": 1}
    assert counts_by_kind(counts) == {"email": 2, "ip_address": 2, "key": 1}
    assert redacted.count("<EMAIL>") == 2 and redacted.count("<IP_ADDRESS>") == 2 and "<KEY>" in redacted
    assert "'10.0.0.1'" in redacted


def test_only_enabled_kinds_are_redacted() -> None:
    text = f"mail jane@gmail.com from 93.184.216.34 with {GITHUB_TOKEN}"
    redacted, counts = redact(text, rules_for(["email"]))
    assert redacted == f"mail <EMAIL> from 93.184.216.34 with {GITHUB_TOKEN}"
    assert counts == {"email": 1}


def test_overlapping_matches_are_redacted_once() -> None:
    # An AWS key id inside a key block: one span, the block (it starts first).
    block = PRIVATE_KEY.replace("\n-----END", "\nAKIAIOSFODNN7EXAMPLE\n-----END")
    text = f"{block}\nnote: jane@gmail.com"
    assert [span.rule.name for span in find_pii(text, rules_for(["key"]))] == ["private_key"]
    assert redact(text) == ("<KEY>\nnote: <EMAIL>", {"private_key": 1, "email": 1})


@pytest.mark.parametrize(
    "code",
    [
        "pip install scikit-learn  # sk-learn is the import name",
        "git clone git@github.com:org/repo.git",
        "url = 'https://alice@example.org/path'",  # a user, no password
        "see http://localhost:8080/a:b@c",  # a path, not credentials
        "header = 'eyJhbGciOiJIUzI1NiJ9'",  # one segment is not a JWT
        "ID = 'AIzaShort'",
    ],
)
def test_common_code_is_not_redacted(code: str) -> None:
    assert redact(code)[1] == Counter(), code
