"""`python -m bench.assemble`: join every `bench/results/*.md` section into BENCHMARKS.md (the last step of `make bench`)."""

from __future__ import annotations

from pathlib import Path

from bench.sections import RESULTS, ROOT

HEAD = "# Benchmarks\n\nProduced by `make bench`; each section names its machine. Ratios compare runs made in the same session.\n\n"


def assemble(out: Path = ROOT / "BENCHMARKS.md") -> Path:
    out.write_text(HEAD + "\n".join(p.read_text() for p in sorted(RESULTS.glob("*.md"))))
    return out


if __name__ == "__main__":
    print(f"wrote {assemble()}")
