"""Where a benchmark's Markdown section goes, and the one way to write it there."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]  # the repository
RESULTS = ROOT / "bench" / "results"


def section_path(name: str) -> Path:
    """`bench/results/<name>.md`: the section of benchmark `bench/<name>.py`."""
    return RESULTS / f"{name}.md"


def write_section(name: str, text: str, out: Path | None = None) -> Path:
    """Write `text` as benchmark `name`'s section (or to `out`, where a run asks for another file)."""
    out = out or section_path(name)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    return out
