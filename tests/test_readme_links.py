"""Colab and Binder: the README's badges open this repository's notebooks, and the first cell
of a notebook installs d2nb from this repository (what ``setup_notebook()`` then does in a Colab
kernel is tests/test_setup_notebook.py's).

The repository URL is written once, as ``d2nb.install.REPOSITORY_URL``; every badge is checked
against the URL built from it, so a move of the repository is one edit plus a README update
that these tests ask for.
"""

import re

import nbformat
import pytest

import d2nb.install as install
from conftest import NOTEBOOKS, ROOT

# The four notebooks of the user's work; a badge may come before its notebook is written.
PLANNED_NOTEBOOKS = ["01_inference", "02_dataset_prep", "03_train", "04_evaluate", "05_export"]
COLAB = "https://colab.research.google.com"
BINDER = "https://mybinder.org/v2/gh"
BADGE = re.compile(r"\[!\[(?P<alt>[^\]]*)\]\((?P<image>[^)]+)\)\]\((?P<href>[^)]+)\)")


def github_owner_and_name() -> str:
    match = re.fullmatch(r"https://github\.com/([\w.-]+/[\w.-]+?)/?", install.REPOSITORY_URL)
    assert match, f"REPOSITORY_URL {install.REPOSITORY_URL!r} is not https://github.com/OWNER/NAME"
    return match.group(1)


def colab_url(notebook_name: str) -> str:
    return f"{COLAB}/github/{github_owner_and_name()}/blob/{install.REPOSITORY_BRANCH}/notebooks/{notebook_name}.ipynb"


def readme_badges() -> list:
    return [m.groupdict() for m in BADGE.finditer((ROOT / "README.md").read_text())]


def colab_badges() -> dict:
    """notebook name -> the badge's link, for every "Open in Colab" badge of the README."""
    badges = {}
    for badge in readme_badges():
        if badge["href"].startswith(COLAB):
            name = badge["href"].rsplit("/", 1)[-1].removesuffix(".ipynb")
            assert name not in badges, f"two Colab badges for {name}"
            badges[name] = badge["href"]
    return badges


def test_every_notebook_has_a_colab_badge():
    existing = sorted(p.stem for p in NOTEBOOKS.glob("*.ipynb"))
    assert sorted(colab_badges()) == sorted(set(PLANNED_NOTEBOOKS) | set(existing)), (
        "README.md needs one 'Open in Colab' badge per notebook, 01 to 04 and any new one")


@pytest.mark.parametrize("name", PLANNED_NOTEBOOKS)
def test_colab_badge_is_built_from_the_repository_url(name):
    assert colab_badges()[name] == colab_url(name), (
        f"the README's Colab badge for {name} does not point at d2nb.install.REPOSITORY_URL "
        f"({install.REPOSITORY_URL}, branch {install.REPOSITORY_BRANCH})")


@pytest.mark.parametrize("path", sorted(NOTEBOOKS.glob("*.ipynb")), ids=lambda p: p.name)
def test_colab_badge_opens_an_existing_notebook(path):
    href = colab_badges()[path.stem]
    relative = href.split(f"/blob/{install.REPOSITORY_BRANCH}/", 1)[1]
    assert (ROOT / relative).is_file(), f"{href} names {relative}, which is not in the repository"


def test_binder_badge_is_built_from_the_repository_url():
    binder = [b["href"] for b in readme_badges() if b["href"].startswith("https://mybinder.org")]
    assert binder == [f"{BINDER}/{github_owner_and_name()}/{install.REPOSITORY_BRANCH}?urlpath=lab/tree/notebooks"]


def test_d2nb_is_pip_installable_from_the_repository_url():
    assert install.d2nb_requirement() == f"d2nb @ git+{install.REPOSITORY_URL}.git@{install.REPOSITORY_BRANCH}"
    assert (ROOT / "pyproject.toml").is_file(), "pip installs from the repository's root: pyproject.toml must be there"


@pytest.mark.parametrize("path", sorted(NOTEBOOKS.glob("*.ipynb")), ids=lambda p: p.name)
def test_a_notebook_that_installs_d2nb_installs_it_from_the_repository_url(path):
    first = next(c for c in nbformat.read(path, as_version=4).cells if c.cell_type == "code")
    for url in re.findall(r"git\+https://[^\s'\"]+", first.source):
        if "detectron2" not in url:
            assert url == f"git+{install.REPOSITORY_URL}.git@{install.REPOSITORY_BRANCH}", (
                f"{path.name}'s first cell installs d2nb from {url}; use d2nb.install.d2nb_requirement()'s URL")
