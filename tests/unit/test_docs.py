"""The docs stay true: the settings page is generated from ``Settings``, the CLI page names every
subcommand and flag, every link in the README, docs/ and the examples leads to a file (and heading)
that exists, and the README stays a front door (at most ``README_MAX_LINES`` lines)."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest

from serving.cli import _parser
from serving.config import REPO_ROOT, settings_reference

ROOT = Path(__file__).resolve().parents[2]
SETTINGS_PAGE = ROOT / "docs" / "reference" / "settings.md"
CLI_PAGE = ROOT / "docs" / "reference" / "cli.md"
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md")), *sorted((ROOT / "examples").rglob("*.md"))]
README_MAX_LINES = 250
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def test_the_settings_page_is_generated_from_the_settings() -> None:
    assert SETTINGS_PAGE.read_text() == settings_reference(), (
        "docs/reference/settings.md is out of date: run `make docs` "
        "(python -m serving.config > docs/reference/settings.md) and commit it")


def test_the_settings_page_is_the_same_on_every_checkout() -> None:
    page = settings_reference()
    assert str(REPO_ROOT) not in page
    assert "`<home>/.rankserve`" in page


def _subcommands() -> dict[str, argparse.ArgumentParser]:
    (sub,) = [a for a in _parser()._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(sub.choices)


def _section(page: str, command: str) -> str:
    match = re.search(rf"^## rankserve {re.escape(command)}\n(.*?)(?=^## |\Z)", page, re.M | re.S)
    assert match is not None, f"docs/reference/cli.md has no section '## rankserve {command}'"
    return match.group(1)


@pytest.mark.parametrize("command", sorted(_subcommands()))
def test_the_cli_page_names_every_flag_and_choice_of_each_subcommand(command: str) -> None:
    page = CLI_PAGE.read_text()
    section = _section(page, command)
    missing = []
    for action in _subcommands()[command]._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        for flag in action.option_strings:
            where = page if flag == "--verbose" else section  # every subcommand's: said once for all
            if f"`{flag}" not in where:
                missing.append(flag)
        missing += [str(c) for c in action.choices or () if f"`{c}`" not in section]
    assert missing == [], f"docs/reference/cli.md, '## rankserve {command}', does not name {missing}"


def _slug(heading: str) -> str:
    """The anchor a Markdown renderer (GitHub's rule) gives a heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower().replace("`", ""))
    return text.replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    text = re.sub(r"```.*?```", "", path.read_text(), flags=re.S)
    return {_slug(h) for h in re.findall(r"^#+ (.+)$", text, re.M)}


def _links(path: Path) -> list[str]:
    text = re.sub(r"```.*?```", "", path.read_text(), flags=re.S)
    return [t for t in LINK.findall(text) if not re.match(r"[a-z]+:", t)]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_link_leads_to_a_file_and_heading_that_exist(page: Path) -> None:
    broken = []
    for target in _links(page):
        file_part, _, anchor = target.partition("#")
        dest = (page.parent / file_part).resolve() if file_part else page
        if not dest.exists():
            broken.append(target)
        elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
            broken.append(target)
    assert broken == [], f"{page.relative_to(ROOT)} links to what does not exist: {broken}"


def test_the_readme_stays_a_front_door() -> None:
    lines = len((ROOT / "README.md").read_text().splitlines())
    assert lines <= README_MAX_LINES, (f"README.md has {lines} lines (at most {README_MAX_LINES}): move detail "
                                       "into docs/ and link it")


def test_the_own_ranker_walkthrough_shows_the_examples_declaration() -> None:
    import yaml

    page = (ROOT / "docs" / "own-ranker.md").read_text()
    shown = re.search(r"```yaml\n(.*?)```", page, re.S)
    assert shown is not None, "docs/own-ranker.md shows no declaration"
    example = ROOT / "examples" / "own_ranker" / "features.yaml"
    assert yaml.safe_load(shown.group(1)) == yaml.safe_load(example.read_text()), (
        "docs/own-ranker.md shows another declaration than examples/own_ranker/features.yaml")
