"""PII redaction (StarCoder's regex pipeline): one table of rules, one function that applies them.

Each rule finds candidates with a regex and may reject them with a small check. The text replaced is the
rule's ``pii`` group when it has one (the value of ``api_key = "..."``), else the whole match. Matches
of all enabled rules are resolved left to right (earlier start wins, then the longer match), so one
span is never redacted twice.

Placeholders: ``<EMAIL>``, ``<IP_ADDRESS>``, ``<KEY>`` (one per kind; StarCoder's tokens; StarCoder
replaced IPs with random private ones, a fixed token is simpler and leaves no fake data). Decisions that
keep code intact:

* emails need a real top-level domain (a known generic one or a two-letter country code, all lower
  or all upper case) and must not be followed by ``(`` or another word: ``a@property``,
  ``@dataclass``, ``a @ b``, ``x@w.T``, ``q@k.mT`` and ``x@y.to(dev)`` are code. Documentation
  domains (``example.com``...) and SSH remotes (``git@github.com``) are not personal and are kept.
* IP addresses are validated with :mod:`ipaddress` and only globally routable unicast ones are
  redacted: private, loopback, link-local, documentation, reserved and multicast addresses and
  the well-known public DNS resolvers stay, as in StarCoder. Version strings stay: an address
  right after ``version``/``__version__ =``/``release``/``==``..., and single-digit quads like
  ``1.2.3.4`` unless the nearby text mentions a server or DNS (StarCoder's rule). An IPv6
  candidate needs three or more non-empty groups, so slices (``a[::2]``, ``x[1:2:3]``) and C++
  scopes (``std::vector``) never qualify; addresses starting ``::`` are all reserved, so the
  regex only looks at candidates that start with a hex group.
* secrets: the token families maintained secret scanners know, with detect-secrets' own patterns
  (its plugins' ``denylist``: AWS access key ids, GitHub classic tokens, GitLab tokens, Slack tokens
  and webhooks, Stripe live keys, JWTs, npm and PyPI tokens, OpenAI keys, credentials in URLs), plus
  ours where detect-secrets has none (GitHub fine-grained ``github_pat_`` tokens, Google API keys
  ``AIza…``, ``sk-…`` keys anywhere, ``Bearer`` tokens, AWS secret keys in assignments) or does less
  (PEM private keys: the whole block is redacted, only when the body is base64 key material, where
  detect-secrets flags the ``BEGIN`` line), and quoted values assigned to secret-like names
  (``api_key``, ``secret``, ``*_token``, ``password``...) that look random (letters and digits,
  entropy). Hex digests elsewhere (git SHAs in comments, ``sha256 = "..."``) are not secrets and stay.
* credentials in URLs (``scheme://user:password@host``): only the password is replaced; the rule
  *claims* its whole match, so no other rule (the email rule would read ``password@host``) takes a
  span that overlaps it: the scheme, the user and the host stay.
"""

from __future__ import annotations

import ipaddress
import math
import re
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import get_args

from detect_secrets.plugins.aws import AWSKeyDetector
from detect_secrets.plugins.basic_auth import BasicAuthDetector
from detect_secrets.plugins.github_token import GitHubTokenDetector
from detect_secrets.plugins.gitlab_token import GitLabTokenDetector
from detect_secrets.plugins.npm import NpmDetector
from detect_secrets.plugins.openai import OpenAIDetector
from detect_secrets.plugins.pypi_token import PypiTokenDetector
from detect_secrets.plugins.slack import SlackDetector
from detect_secrets.plugins.stripe import StripeDetector

from components.params.clean import PII_RULE_NAMES, PiiKind

PLACEHOLDERS: dict[str, str] = {"email": "<EMAIL>", "ip_address": "<IP_ADDRESS>", "key": "<KEY>"}

#: Generic top-level domains accepted in emails (plus any two-letter country code). Words that are
#: common attribute names in code (``name``, ``page``, ``tools``...) are left out on purpose.
# fmt: off
GENERIC_TLDS = frozenset({
    "com", "net", "org", "edu", "gov", "mil", "int", "info", "biz", "pro", "mobi", "aero", "coop", "museum",
    "io", "ai", "app", "dev", "xyz", "site", "online", "tech", "cloud", "email", "software", "company",
    "agency", "studio", "academy", "institute", "foundation", "science", "website", "blog",
})
# fmt: on
#: Reserved for documentation (RFC 2606) or not a person's address.
KEPT_EMAIL_DOMAINS = ("example.com", "example.org", "example.net")
KEPT_EMAILS = frozenset({"git@github.com", "git@gitlab.com", "git@bitbucket.org"})

#: Well-known public DNS resolvers: not personal, kept (StarCoder's list plus their IPv6 forms).
# fmt: off
PUBLIC_DNS_RESOLVERS = frozenset({
    "8.8.8.8", "8.8.4.4", "1.1.1.1", "1.0.0.1", "9.9.9.9", "149.112.112.112", "208.67.222.222",
    "208.67.220.220", "76.76.19.19", "76.223.122.150", "8.26.56.26", "8.20.247.20", "94.140.14.14",
    "94.140.15.15", "2001:4860:4860::8888", "2001:4860:4860::8844", "2606:4700:4700::1111",
    "2606:4700:4700::1001",
})
# fmt: on
#: Text right before an address that makes it a version number: ``version 1.2.3.4``, ``==1.2.3.4``.
VERSION_PREFIX = re.compile(r"(?i)(?:version|\bver\b|\brelease|\brev\b|[=<>~!]=)[\s\"'=:(._]*$")
#: How far back on the line the version prefix is looked for, and around a single-digit quad for words
#: that make it a real address.
CONTEXT_CHARS = 40
SERVER_CONTEXT = re.compile(r"(?i)dns|server")

#: A generic secret value must be this long, mix letters and digits and reach this entropy (bits/char).
MIN_SECRET_CHARS = 12
MIN_SECRET_ENTROPY = 3.0

#: The residue of a PEM body (after quotes, escapes and header lines are removed) must be this much base64.
MIN_PRIVATE_KEY_CHARS = 64
_PEM_NOISE = re.compile(r"\\[nr]|[\"'`]")
_PEM_HEADER = re.compile(r"^\s*[A-Za-z-]+:.*$", re.MULTILINE)
_BASE64 = re.compile(r"[A-Za-z0-9+/=]+")

Check = Callable[[re.Match[str], str], bool]
"""``check(match, text)``: keep this candidate (found in ``text``) as PII."""


@dataclass(frozen=True)
class PiiRule:
    """One detector: a regex for candidates, an optional check, and the kind it counts as.

    ``hints``: literal substrings one of which every match contains; when none is in the text the
    regex is not run (a cheap prefilter: most files contain no ``AKIA`` or ``PRIVATE KEY``).
    ``claims``: the whole match, not only the replaced ``pii`` group, is this rule's: no other rule's
    span may overlap it (a URL's ``user:password@host`` is not an email address).
    """

    name: str
    kind: PiiKind
    pattern: re.Pattern[str]
    check: Check | None = None
    hints: tuple[str, ...] = ()
    #: The group replaced: ``None`` means the ``pii`` group when the pattern has one, else the match.
    group: int | str | None = None
    claims: bool = False

    @property
    def replaced(self) -> int | str:
        """The group of a match that is replaced."""
        if self.group is not None:
            return self.group
        return "pii" if "pii" in self.pattern.groupindex else 0


@dataclass(frozen=True)
class PiiSpan:
    """A span of text to replace by the placeholder of ``rule.kind``."""

    start: int
    end: int
    rule: PiiRule


def maintained(plugin: type, index: int = 0, flags: int = 0) -> re.Pattern[str]:
    """Pattern ``index`` of a detect-secrets plugin's ``denylist`` (the maintained regex), compiled as is
    (``flags``: extra flags, e.g. case-insensitivity, on top of the plugin's own)."""
    pattern = plugin.denylist[index]  # type: ignore[attr-defined]
    return re.compile(pattern.pattern, pattern.flags | flags)


#: Passwords of documentation and test URLs (``http://user:pass@python.org/``): not secrets.
PLACEHOLDER_PASSWORDS = frozenset({"pass", "password", "passwd", "pwd", "secret", "xxx", "changeme", "***"})


def _real_password(match: re.Match[str], text: str) -> bool:
    return match.group(1).lower() not in PLACEHOLDER_PASSWORDS


def _jwt(match: re.Match[str], text: str) -> bool:
    """A JWT: three dot-separated base64url parts, the first decoding to a JSON header (detect-secrets'
    own check), at least 20 characters in the payload."""
    import base64
    import json

    header, _, rest = match.group().partition(".")
    try:
        decoded = json.loads(base64.urlsafe_b64decode(header + "=" * (-len(header) % 4)))
    except ValueError:
        return False
    return isinstance(decoded, dict) and len(rest) >= 20


def _value(match: re.Match[str]) -> str:
    """The part of a match that is checked and replaced: the ``pii`` group when the pattern has one."""
    return match.group("pii" if "pii" in match.re.groupindex else 0)


def shannon_entropy(value: str) -> float:
    """Bits per character of ``value``'s character distribution."""
    counts = Counter(value)
    return -sum(n / len(value) * math.log2(n / len(value)) for n in counts.values())


def looks_random(value: str) -> bool:
    """A secret-looking value: long enough, letters and digits mixed, high entropy."""
    return (
        len(value) >= MIN_SECRET_CHARS
        and any(c.isdigit() for c in value)
        and any(c.isalpha() for c in value)
        and shannon_entropy(value) >= MIN_SECRET_ENTROPY
    )


def _random_value(match: re.Match[str], text: str) -> bool:
    return looks_random(_value(match))


def _secret_assignment(match: re.Match[str], text: str) -> bool:
    """A random-looking value assigned to a secret-like name (the name is read back from the text)."""
    before = text[max(0, match.start() - CONTEXT_CHARS) : match.start()]
    return SECRET_NAME.search(before) is not None and looks_random(_value(match))


def _personal_email(match: re.Match[str], text: str) -> bool:
    value = match.group()
    tld = value.rsplit(".", 1)[1]
    if not (tld.islower() or tld.isupper()) or (len(tld) != 2 and tld.lower() not in GENERIC_TLDS):
        return False
    domain = value.rsplit("@", 1)[1].lower()
    kept_domain = any(domain == kept or domain.endswith("." + kept) for kept in KEPT_EMAIL_DOMAINS)
    return not kept_domain and value.lower() not in KEPT_EMAILS


def _routable(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """A globally routable unicast address that is not a public DNS resolver."""
    return (
        address.is_global
        and not address.is_reserved
        and not address.is_multicast
        and str(address) not in PUBLIC_DNS_RESOLVERS
    )


def _personal_ipv4(match: re.Match[str], text: str) -> bool:
    value, start = match.group(), match.start()
    try:
        address = ipaddress.IPv4Address(value)  # rejects 256.1.1.1 and leading zeros (01.2.3.4)
    except ValueError:
        return False
    line_start = text.rfind("\n", 0, start) + 1
    if VERSION_PREFIX.search(text[max(line_start, start - CONTEXT_CHARS) : start]):
        return False
    if len(value) == 7:  # x.x.x.x: a version or a placeholder unless it is about a server (StarCoder)
        context = text[max(0, start - 2 * CONTEXT_CHARS) : match.end() + 2 * CONTEXT_CHARS]
        if not SERVER_CONTEXT.search(context):
            return False
    return _routable(address)


def _personal_ipv6(match: re.Match[str], text: str) -> bool:
    value = match.group()
    if sum(1 for group in value.split(":") if group) < 3:
        return False
    try:
        address = ipaddress.IPv6Address(value)
    except ValueError:
        return False
    return _routable(address)


def _private_key_body(match: re.Match[str], text: str) -> bool:
    body = match.group("body")
    residue = "".join(_PEM_HEADER.sub("", _PEM_NOISE.sub("", body)).split())
    return len(residue) >= MIN_PRIVATE_KEY_CHARS and _BASE64.fullmatch(residue) is not None


#: Secret-like names, at the end of the identifier that is assigned (``my_api_key =``, ``"password":``).
#: Bare ``key`` (``cache_key``) and ``pwd`` (a working directory) are not on the list.
SECRET_NAME = re.compile(
    r"(?i)(?<![A-Za-z0-9])(?:api[_-]?key|apikey|secret(?:[_-]?key)?|client[_-]?secret|private[_-]?key"
    r"|access[_-]?key|(?:access|auth|api|bearer|refresh|session|private|secret)?[_-]?token|passw(?:or)?d)"
    r"[\"'\]]{0,2}\s*$"
)
# Some patterns start with a plain character class and check the character before it with a lookbehind
# (rather than starting with the lookbehind): ``re`` then skips quickly to candidate positions.
_HEX = "[0-9A-Fa-f]"
_IPV4 = r"(?:\d{1,3}\.){3}\d{1,3}"

#: The table: order matters only for ties (same start and length), where the earlier rule wins.
PII_RULES: tuple[PiiRule, ...] = (
    PiiRule(
        "private_key",
        "key",
        re.compile(
            r"-----BEGIN [A-Z0-9 ]*PRIVATE KEY(?: BLOCK)?-----(?P<body>(?:[^-]|-(?!----))*?)"
            r"-----END [A-Z0-9 ]*PRIVATE KEY(?: BLOCK)?-----"
        ),
        _private_key_body,
        hints=("PRIVATE KEY",),
    ),
    # The password of scheme://user:password@host (group 1 of detect-secrets' BasicAuthDetector).
    PiiRule(
        "url_credentials",
        "key",
        maintained(BasicAuthDetector),
        _real_password,
        hints=("://",),
        group=1,
        claims=True,
    ),
    PiiRule(
        "aws_access_key_id", "key", maintained(AWSKeyDetector), hints=("AKIA", "ASIA", "ABIA", "ACCA", "A3T")
    ),
    PiiRule(
        "aws_secret_key",
        "key",
        re.compile(
            r"(?i:aws)[\w.-]{0,20}?(?i:secret|key)[\w.-]{0,20}?[\"'\]]?\s*[:=]>?\s*[\"']?"
            r"(?P<pii>[A-Za-z0-9/+]{40})(?![A-Za-z0-9/+=])"
        ),
        _random_value,
        hints=("aws", "AWS", "Aws"),
    ),
    PiiRule(
        "github_token",
        "key",
        maintained(GitHubTokenDetector),
        hints=("ghp_", "gho_", "ghu_", "ghs_", "ghr_"),
    ),
    # Fine-grained personal access tokens: detect-secrets 1.5 has no pattern for them.
    PiiRule(
        "github_fine_grained_token", "key", re.compile(r"\bgithub_pat_\w{22,255}"), hints=("github_pat_",)
    ),
    *(
        PiiRule("gitlab_token", "key", pattern, hints=("gl", "GR1348941"))
        for pattern in (maintained(GitLabTokenDetector, i) for i in range(len(GitLabTokenDetector.denylist)))
    ),
    PiiRule("slack_token", "key", maintained(SlackDetector, 0), hints=("xox",)),
    PiiRule("slack_webhook", "key", maintained(SlackDetector, 1), hints=("hooks.slack.com",)),
    PiiRule("stripe_key", "key", maintained(StripeDetector), hints=("k_live_",)),
    PiiRule("npm_token", "key", maintained(NpmDetector), hints=("_authToken",)),
    *(PiiRule("pypi_token", "key", maintained(PypiTokenDetector, i), hints=("pypi-",)) for i in range(2)),
    PiiRule("openai_key", "key", maintained(OpenAIDetector), hints=("T3BlbkFJ",)),
    # Google API keys and sk- keys (OpenAI's current and project keys...): detect-secrets has neither.
    PiiRule(
        "google_api_key", "key", re.compile(r"\bAIza[0-9A-Za-z_-]{35}(?![0-9A-Za-z_-])"), hints=("AIza",)
    ),
    PiiRule(
        "sk_key",
        "key",
        re.compile(r"(?<![\w-])sk-(?:[a-z]+-)?(?P<pii>[A-Za-z0-9_-]{20,})(?![\w-])"),
        _random_value,
        hints=("sk-",),
    ),
    PiiRule(
        "bearer_token",
        "key",
        re.compile(r"\bBearer\s+(?P<pii>[A-Za-z0-9._~+/-]{16,}=*)(?![A-Za-z0-9._~+/=-])"),
        _random_value,
        hints=("Bearer",),
    ),
    # detect-secrets' JWT pattern is lazy (it stops before the signature: enough to flag, not to redact).
    PiiRule(
        "jwt", "key", re.compile(r"\beyJ[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*"), _jwt, hints=("eyJ",)
    ),
    PiiRule(
        "secret_assignment",  # `= "value"`, `: 'value'`, `=> "value"`; the name before it is checked
        "key",
        re.compile(rf"[:=][=>]?\s*[rbufRBUF]?[\"'`](?P<pii>[^\"'`\s]{{{MIN_SECRET_CHARS},}})[\"'`]"),
        _secret_assignment,
    ),
    PiiRule(
        "email",
        "email",
        re.compile(
            r"[A-Za-z0-9](?<![\w.%+@-][A-Za-z0-9])[\w.%+-]*@"  # local part, not inside a longer token
            r"(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]{2,24}"  # domain and TLD
            r"(?![\w(@-]|\.[A-Za-z0-9])"  # ends there: not `x@y.to(...)`, not a longer dotted name
        ),
        _personal_email,
        hints=("@",),
    ),
    PiiRule(
        "ipv4",
        "ip_address",
        re.compile(
            r"\d(?<![\w.]\d)\d{0,2}\.(?:\d{1,3}\.){2}\d{1,3}(?!\w|\.\w)"
        ),  # not in a longer dotted run
        _personal_ipv4,
    ),
    PiiRule(
        "ipv6",  # starts with a hex group: addresses starting with `::` are all reserved (kept) anyway
        "ip_address",
        re.compile(
            rf"{_HEX}(?<![\w:.]{_HEX}){_HEX}{{0,3}}:(?:{_HEX}{{0,4}}:){{1,6}}(?:{_HEX}{{1,4}}|{_IPV4})?(?![\w:])"
        ),
        _personal_ipv6,
    ),
)

PII_KINDS: tuple[str, ...] = get_args(PiiKind)
RULE_NAMES: tuple[str, ...] = tuple(dict.fromkeys(rule.name for rule in PII_RULES))
assert {rule.kind for rule in PII_RULES} == set(PII_KINDS) == set(PLACEHOLDERS), "one placeholder per kind"
assert RULE_NAMES == PII_RULE_NAMES, "components/params/clean.py lists the rules of this table"


def rules_for(kinds: Iterable[str]) -> tuple[PiiRule, ...]:
    """The rules of the given kinds, in table order."""
    wanted = set(kinds)
    return tuple(rule for rule in PII_RULES if rule.kind in wanted)


def find_pii(text: str, rules: Iterable[PiiRule] = PII_RULES) -> list[PiiSpan]:
    """Non-overlapping PII spans in ``text``, in order (earliest start first, then the longest).

    Conflicts are resolved on each candidate's *claim* (the whole match for a claiming rule, else the
    replaced span): a candidate whose claim overlaps an earlier kept one is dropped.
    """
    candidates: list[tuple[int, int, int, int, int, PiiRule]] = []
    for order, rule in enumerate(rules):
        if rule.hints and not any(hint in text for hint in rule.hints):
            continue
        for match in rule.pattern.finditer(text):
            if rule.check is None or rule.check(match, text):
                start, end = match.span(rule.replaced)
                claim_start, claim_end = match.span() if rule.claims else (start, end)
                candidates.append((claim_start, -claim_end, order, start, end, rule))
    spans: list[PiiSpan] = []
    claimed_to = -1
    for claim_start, negative_claim_end, _, start, end, rule in sorted(candidates, key=lambda c: c[:3]):
        if claim_start >= claimed_to:
            spans.append(PiiSpan(start, end, rule))
            claimed_to = -negative_claim_end
    return spans


def redact(text: str, rules: Iterable[PiiRule] = PII_RULES) -> tuple[str, Counter[str]]:
    """Replace PII by its kind's placeholder; returns the new text and the count per rule name."""
    spans = find_pii(text, rules)
    if not spans:
        return text, Counter()
    parts: list[str] = []
    position = 0
    for span in spans:
        parts += [text[position : span.start], PLACEHOLDERS[span.rule.kind]]
        position = span.end
    parts.append(text[position:])
    return "".join(parts), Counter(span.rule.name for span in spans)


def counts_by_kind(rule_counts: Counter[str] | dict[str, int]) -> dict[str, int]:
    """Per-rule counts summed per kind; every kind is present (zeros included)."""
    kind_of = {rule.name: rule.kind for rule in PII_RULES}
    totals = dict.fromkeys(PII_KINDS, 0)
    for name, n in rule_counts.items():
        totals[kind_of[name]] += n
    return totals
