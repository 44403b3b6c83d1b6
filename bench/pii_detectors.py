"""PII and secret detection: codemill's redaction engine beside detect-secrets' own scanner, in one run.

Both run over the default corpus (the Python standard library files ingest reads) with one planted
example of each token family appended to a copy of one file. codemill: ``clean.pii.redact`` with every
rule (its token patterns are detect-secrets' plugin patterns where it has them). detect-secrets 1.5: its
plugins' ``analyze_line`` on every line (what its scanner does per file, without its filters), for the
same families. Prints throughput, their ratio, what each found of the planted examples, and codemill's
redactions per rule on the unplanted corpus (where every hit is a false positive or real PII to look at).

    python bench/pii_detectors.py [--no-write]
"""

from __future__ import annotations

import argparse
import sys
import sysconfig
import time
from collections import Counter
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT_ROOT))

from benchdoc import publish  # noqa: E402

from components.clean.pii import PII_RULES, find_pii  # noqa: E402

SECTION = "## PII and secret detection"
#: One example per family (fake values of the real formats).
PLANTED = {
    "aws_access_key_id": "AWS_ACCESS_KEY_ID = 'AKIAIOSFODNN7EXAMPLF'",
    "github_token": "token = 'ghp_a1B2c3D4e5F6g7H8i9J0k1L2m3N4o5P6q7R8'",
    "github_fine_grained_token": "t = 'github_pat_11AAAAAAA0bcdefghijklmno_" + "x7" * 30 + "'",
    "gitlab_token": "GITLAB = 'glpat-xk29Fj3nQ8vLm2Ps7Rt1'",
    "slack_token": "SLACK = 'xoxb-123456789012-1234567890123-AbCdEfGhIjKlMnOpQrStUvWx'",
    "stripe_key": "STRIPE = 'sk_live_4eC39HqLyjWDarjtT1zdp7dc'",
    "npm_token": "//registry.npmjs.org/:_authToken=npm_a1B2c3D4e5F6g7H8i9J0k1L2m3N4o5P6q7R8",
    "pypi_token": "PYPI = 'pypi-AgEIcHlwaS5vcmc" + "Ab1" * 24 + "'",
    "openai_key": "OPENAI = 'sk-abcdefghij1234567890T3BlbkFJabcdefghij1234567890'",
    "google_api_key": "MAPS = 'AIzaSyD-9tSrke72PouQMnMX-a7eZSW0jkFMBWY'",
    "sk_key": "client = OpenAI('sk-proj-Ab3dEfGh1jKlMn0pQrStUvWxYz98765')",
    "jwt": "c = 'eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNH'",
    "url_credentials": "DSN = 'postgresql://report:Zx9-Pq4w@db.internal.corp.com:5432/sales'",
    "private_key": "KEY = '''-----BEGIN RSA PRIVATE KEY-----\n"
    + "MIIEow" * 20
    + "\n-----END RSA PRIVATE KEY-----'''",
}


def corpus() -> list[tuple[str, str]]:
    """``(path, text)`` of the standard library's .py files (the default corpus, before curation)."""
    root = Path(sysconfig.get_paths()["stdlib"])
    files = []
    for path in sorted(root.rglob("*.py")):
        if "site-packages" in path.parts:
            continue
        try:
            files.append((str(path.relative_to(root)), path.read_text(encoding="utf-8")))
        except (UnicodeDecodeError, OSError):
            continue
    return files


def detect_secrets_plugins() -> list:
    """detect-secrets' plugins for the same families."""
    from detect_secrets.plugins.aws import AWSKeyDetector
    from detect_secrets.plugins.basic_auth import BasicAuthDetector
    from detect_secrets.plugins.github_token import GitHubTokenDetector
    from detect_secrets.plugins.gitlab_token import GitLabTokenDetector
    from detect_secrets.plugins.jwt import JwtTokenDetector
    from detect_secrets.plugins.npm import NpmDetector
    from detect_secrets.plugins.openai import OpenAIDetector
    from detect_secrets.plugins.private_key import PrivateKeyDetector
    from detect_secrets.plugins.pypi_token import PypiTokenDetector
    from detect_secrets.plugins.slack import SlackDetector
    from detect_secrets.plugins.stripe import StripeDetector

    classes = (
        AWSKeyDetector, BasicAuthDetector, GitHubTokenDetector, GitLabTokenDetector, JwtTokenDetector,
        NpmDetector, OpenAIDetector, PrivateKeyDetector, PypiTokenDetector, SlackDetector, StripeDetector,
    )  # fmt: skip
    return [cls() for cls in classes]


def flagged(plugins: list, text: str) -> bool:
    """Whether any plugin flags any line of ``text``."""
    return any(
        p.analyze_line(filename="x", line=line, line_number=1) for p in plugins for line in text.splitlines()
    )


def scan_theirs(files: list[tuple[str, str]], plugins: list) -> tuple[float, int]:
    """Seconds and findings of detect-secrets' plugins, line by line."""
    started, found = time.perf_counter(), 0
    for path, text in files:
        for number, line in enumerate(text.splitlines(), start=1):
            for plugin in plugins:
                found += len(plugin.analyze_line(filename=path, line=line, line_number=number))
    return time.perf_counter() - started, found


def scan_ours(files: list[tuple[str, str]]) -> tuple[float, Counter[str]]:
    """Seconds and findings per rule of codemill's engine (every rule, every kind)."""
    started, found = time.perf_counter(), Counter()
    for _, text in files:
        found.update(span.rule.name for span in find_pii(text, PII_RULES))
    return time.perf_counter() - started, found


def main() -> None:
    """Run both; print and write the section of docs/benchmarks.md."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    files = corpus()
    megabytes = sum(len(text.encode()) for _, text in files) / 1e6
    plugins = detect_secrets_plugins()
    our_s, ours = scan_ours(files)
    their_s, theirs = scan_theirs(files, plugins)
    planted_found = {
        family: (
            family in {span.rule.name for span in find_pii(example, PII_RULES)},
            flagged(plugins, example),
        )
        for family, example in PLANTED.items()
    }
    yes_no = {True: "yes", False: "no"}
    lines = [
        SECTION,
        "",
        "Command: `python bench/pii_detectors.py`",
        "",
        f"Corpus: the {len(files)} standard-library `.py` files ({megabytes:.1f} MB), one process.",
        "",
        "| scanner | seconds | MB/s |",
        "| --- | ---: | ---: |",
        f"| codemill `find_pii` (every rule) | {our_s:.2f} | {megabytes / our_s:.1f} |",
        f"| detect-secrets 1.5 plugins' `analyze_line` | {their_s:.2f} | {megabytes / their_s:.1f} |",
        "",
        f"Ratio (codemill / detect-secrets MB/s): **{their_s / our_s:.2f}x**. detect-secrets' scanner flags "
        f"{theirs} lines of the corpus; codemill's redactions there, per rule: "
        + ", ".join(f"`{name}` {n}" for name, n in sorted(ours.items(), key=lambda kv: -kv[1])),
        "",
        "| planted example | codemill redacts | detect-secrets flags |",
        "| --- | --- | --- |",
        *(f"| {name} | {yes_no[a]} | {yes_no[b]} |" for name, (a, b) in planted_found.items()),
        "",
    ]  # fmt: skip
    section = "\n".join(lines)
    publish(section, write=not args.no_write)


if __name__ == "__main__":
    main()
