"""docs/migrating.md's mapping tables say what the code maps, row by row."""

from __future__ import annotations

from api_support import REPO_ROOT

from wacht.service.http.openai_api import OPENAI_CATEGORIES
from wacht.service.http.perspective import PERSPECTIVE_ATTRIBUTES, UNMAPPED_ATTRIBUTES

DOC = (REPO_ROOT / "docs" / "migrating.md").read_text()


def _row(name: str) -> str:
    rows = [line for line in DOC.splitlines() if line.startswith(f"| `{name}` |")]
    assert len(rows) == 1, f"{name}: {len(rows)} rows in docs/migrating.md"
    return rows[0].split("|")[2]


def test_openai_table_matches_code() -> None:
    for name, sources in OPENAI_CATEGORIES.items():
        cell = _row(name)
        assert [w.strip("` ,") for w in cell.replace("else", ",").split(",") if w.strip("` ")] \
            == list(sources) or (not sources and cell.strip() == "—"), (name, cell)


def test_perspective_table_matches_code() -> None:
    for name, category in PERSPECTIVE_ATTRIBUTES.items():
        assert _row(name).strip() == f"`{category}`", name
    for name in UNMAPPED_ATTRIBUTES:
        assert f"`{name}`" in DOC, name
