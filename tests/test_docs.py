"""The README and docs stand alone: every link and every relative path they name lies inside the repository."""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", ROOT / "results" / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")
#: A path leaving its folder (``../x``), in a link or in code.
PARENT = re.compile(r"(?<![\w.])\.\./[\w./-]+")
URL = re.compile(r"\b(?:https?|ftp)://\S+")


@pytest.mark.parametrize("page", PAGES, ids=[str(page.relative_to(ROOT)) for page in PAGES])
def test_a_page_links_only_to_files_of_the_repository(page):
    text = page.read_text()
    for target in LINK.findall(text):
        assert not URL.match(target), f"{page.name} links outside the repository: {target}"
        resolved = (page.parent / target).resolve()
        assert resolved.is_relative_to(ROOT) and resolved.exists(), f"{page.name}: {target} is not in the repository"
    for path in PARENT.findall(text):
        resolved = (page.parent / path).resolve()
        assert resolved.is_relative_to(ROOT) and resolved.exists(), f"{page.name} names {path}, not in the repository"
    assert not URL.findall(text), f"{page.name} names a web address: {URL.findall(text)[0]}"
