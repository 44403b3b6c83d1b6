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
* secrets: AWS access key ids, AWS secret keys in assignments, GitHub and Slack tokens, Slack
  webhooks, ``Bearer`` tokens, PEM private key blocks (whole block, only when the body is
  base64 key material), and quoted values assigned to secret-like names (``api_key``,
  ``secret``, ``*_token``, ``password``...) that look random (letters and digits, entropy).
  Hex digests elsewhere (git SHAs in comments, ``sha256 = "..."``) are not secrets and stay.
"""

from __future__ import annotations

import ipaddress
import math
import re
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import get_args

from components.params.clean import PiiKind

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
    """

    name: str
    kind: PiiKind
    pattern: re.Pattern[str]
    check: Check | None = None
    hints: tuple[str, ...] = ()


@dataclass(frozen=True)
class PiiSpan:
    """A span of text to replace by the placeholder of ``rule.kind``."""

    start: int
    end: int
    rule: PiiRule


def _value(match: re.Match[str]) -> str:
    """The part of a match that is replaced: the ``pii`` group when the pattern has one."""
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
    PiiRule(
        "aws_access_key_id",
        "key",
        re.compile(r"\b(?:AKIA|ASIA|ABIA|ACCA|A3T[A-Z0-9])[A-Z0-9]{16}\b"),
        hints=("AKIA", "ASIA", "ABIA", "ACCA", "A3T"),
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
        re.compile(r"\b(?:gh[pousr]_[A-Za-z0-9]{36,255}|github_pat_\w{22,255})\b"),
        hints=("ghp_", "gho_", "ghu_", "ghs_", "ghr_", "github_pat_"),
    ),
    PiiRule("slack_token", "key", re.compile(r"\bxox[abposr]-[A-Za-z0-9-]{10,}"), hints=("xox",)),
    PiiRule(
        "slack_webhook",
        "key",
        re.compile(r"https://hooks\.slack\.com/services/T[A-Za-z0-9_]+/B[A-Za-z0-9_]+/[A-Za-z0-9_]+"),
        hints=("hooks.slack.com",),
    ),
    PiiRule(
        "bearer_token",
        "key",
        re.compile(r"\bBearer\s+(?P<pii>[A-Za-z0-9._~+/-]{16,}=*)(?![A-Za-z0-9._~+/=-])"),
        _random_value,
        hints=("Bearer",),
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
RULE_NAMES: tuple[str, ...] = tuple(rule.name for rule in PII_RULES)
assert {rule.kind for rule in PII_RULES} == set(PII_KINDS) == set(PLACEHOLDERS), "one placeholder per kind"


def rules_for(kinds: Iterable[str]) -> tuple[PiiRule, ...]:
    """The rules of the given kinds, in table order."""
    wanted = set(kinds)
    return tuple(rule for rule in PII_RULES if rule.kind in wanted)


def find_pii(text: str, rules: Iterable[PiiRule] = PII_RULES) -> list[PiiSpan]:
    """Non-overlapping PII spans in ``text``, in order (earliest start first, then the longest)."""
    candidates: list[tuple[int, int, int, PiiRule]] = []
    for order, rule in enumerate(rules):
        if rule.hints and not any(hint in text for hint in rule.hints):
            continue
        group = "pii" if "pii" in rule.pattern.groupindex else 0
        for match in rule.pattern.finditer(text):
            if rule.check is None or rule.check(match, text):
                start, end = match.span(group)
                candidates.append((start, -end, order, rule))
    spans: list[PiiSpan] = []
    for start, negative_end, _, rule in sorted(candidates, key=lambda c: c[:3]):
        if not spans or start >= spans[-1].end:
            spans.append(PiiSpan(start, -negative_end, rule))
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
