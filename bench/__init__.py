"""Measurement code, kept apart from product code: each `bench/<name>.py` measures one topic and writes its
Markdown section to `bench/results/<name>.md`; `python -m bench.assemble` joins the sections into BENCHMARKS.md."""
