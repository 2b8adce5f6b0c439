"""The docs against the repository: links resolve, the settings page matches the code, the README stays short.

Pure file checks: nothing is started, nothing is imported from the worker
beyond `service.settings`.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from service.settings import load_settings
from tests.support import ROOT

README = ROOT / "README.md"
PAGES = [README, *sorted((ROOT / "docs").glob("*.md"))]
SETTINGS_PAGE = ROOT / "docs" / "settings.md"
README_MAX_LINES = 220

FENCE = re.compile(r"^(```|~~~).*?^\1", re.MULTILINE | re.DOTALL)
CODE_SPAN = re.compile(r"(`+)(?:(?!\1).)+?\1")
LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*#*\s*$", re.MULTILINE)
ENV_NAME = re.compile(r"(KAFKA|DAGSTER)_[A-Z0-9_]*[A-Z0-9]")


def prose(text: str) -> str:
    """`text` without fenced code blocks and code spans, where a `[x](y)` is not a link."""
    return CODE_SPAN.sub("", FENCE.sub("", text))


def links(page: Path) -> Iterator[str]:
    """The relative link targets of a markdown page (web and mail links left out)."""
    for match in LINK.finditer(prose(page.read_text())):
        target = match.group(1)
        if not re.match(r"[a-z][a-z0-9+.-]*:", target):
            yield target


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: its text lower-cased, punctuation dropped, spaces as hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link shows its text
    text = text.replace("`", "").lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    """Every heading anchor of `page`; repeated headings get -1, -2, ... as on GitHub."""
    seen: dict[str, int] = {}
    found = set()
    for match in HEADING.finditer(FENCE.sub("", page.read_text())):
        base = slug(match.group(1))
        count = seen.get(base, 0)
        seen[base] = count + 1
        found.add(base if count == 0 else f"{base}-{count}")
    return found


def broken(page: Path, target: str) -> str | None:
    """Why `target`, linked from `page`, does not resolve; None when it does."""
    path_part, _, anchor = target.partition("#")
    path = (page.parent / path_part).resolve() if path_part else page
    if not path.exists():
        return f"{page.relative_to(ROOT)}: {target}: no such file"
    if anchor and path.suffix == ".md" and anchor not in anchors(path):
        return f"{page.relative_to(ROOT)}: {target}: no heading #{anchor} in {path.relative_to(ROOT)}"
    return None


def test_the_link_checker_finds_links_and_anchors() -> None:
    assert slug("From the event guide to today's Dagster") == "from-the-event-guide-to-todays-dagster"
    assert slug("Failures: three kinds") == "failures-three-kinds"
    assert slug("The Dagster code location (`dagster_project/`)") == "the-dagster-code-location-dagster_project"
    readme = list(links(README))
    assert "docs/settings.md" in readme and "docs/delivery.md" in readme
    assert not any(target.startswith("http") for target in readme)


def test_every_relative_link_resolves() -> None:
    problems = [problem for page in PAGES for target in links(page) if (problem := broken(page, target))]

    assert problems == []


def env_names_in_code() -> set[str]:
    """Every environment variable name the worker and the code location spell out as a string."""
    names = set()
    for package in ("service", "dagster_project"):
        for source in (ROOT / package).rglob("*.py"):
            for node in ast.walk(ast.parse(source.read_text())):
                if isinstance(node, ast.Constant) and isinstance(node.value, str) and ENV_NAME.fullmatch(node.value):
                    names.add(node.value)
    return names


class RecordingEnv(Mapping[str, str]):
    """An environment that remembers every name it was asked for."""

    def __init__(self, values: dict[str, str]) -> None:
        self.values = values
        self.asked: set[str] = set()

    def __getitem__(self, name: str) -> str:
        self.asked.add(name)
        return self.values[name]

    def __contains__(self, name: Any) -> bool:
        self.asked.add(name)
        return name in self.values

    def __iter__(self) -> Iterator[str]:
        return iter(self.values)

    def __len__(self) -> int:
        return len(self.values)


def names_load_settings_reads() -> set[str]:
    env = RecordingEnv({"KAFKA_DAGSTER_ROUTES": str(ROOT / "routes.toml")})
    load_settings(env)
    return env.asked


def documented_settings() -> set[str]:
    """The variables the settings page's tables list, one per row."""
    return set(re.findall(r"^\| `([A-Z][A-Z0-9_]+)` \|", SETTINGS_PAGE.read_text(), re.MULTILINE))


def test_the_code_scan_finds_every_setting_the_worker_reads() -> None:
    read = names_load_settings_reads()

    assert {"KAFKA_DAGSTER_LOG_FORMAT", "KAFKA_DAGSTER_TOPIC_REFRESH_S", "KAFKA_SASL_PASSWORD"} <= read
    assert read <= env_names_in_code()


def test_the_settings_page_lists_every_variable_the_code_reads() -> None:
    assert sorted(env_names_in_code() - documented_settings()) == []


def test_every_variable_on_the_settings_page_is_read_by_the_code() -> None:
    assert sorted(documented_settings() - env_names_in_code()) == []


def test_the_readme_opens_with_the_two_commands_and_stays_short() -> None:
    text = README.read_text()
    opening = text.split("```", 2)[1].strip().splitlines()

    assert text.startswith("# kafka-dagster\n\n```sh\n")
    assert [line.split("#")[0].strip() for line in opening[1:]] == ["make run", "make test"]
    assert len(text.splitlines()) <= README_MAX_LINES


def test_prose_names_test_files_not_test_functions() -> None:
    named = [f"{page.relative_to(ROOT)}: {name}" for page in PAGES
             for name, suffix in re.findall(r"\b(test_\w+)(\.py)?", FENCE.sub("", page.read_text()))
             if not suffix]

    assert named == []
