"""The curation GPU check's CPU-safe parts: it runs on tiny shapes where Ray, DuckDB, PyAV, pydantic
and dlib cannot be imported (the lent GPU machines have none of them), in bf16 as on a GPU."""

from __future__ import annotations

import subprocess
import sys

import pytest
from conftest import ROOT, subprocess_env

SCRIPT = """
import importlib.abc, sys
class Absent(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {"ray", "duckdb", "av", "pydantic", "dlib", "pyarrow"}:
            raise ImportError(f"{name} is not installed here")
sys.meta_path.insert(0, Absent())
import torch
from model.curation.gpu_check import TINY, check, report
rows = check(TINY, "cpu", torch.bfloat16)
print(report(rows, "a CPU"))
"""


@pytest.mark.slow
def test_gpu_check_runs_every_stage_without_ray_duckdb_pyav_or_pydantic():
    result = subprocess.run([sys.executable, "-c", SCRIPT], cwd=ROOT, env=subprocess_env(), capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    table = [line for line in result.stdout.splitlines() if line.startswith("| ") and "bfloat16" in line]
    assert [line.split(" | ")[0] for line in table] == ["| subjects", "| aesthetic", "| caption"]
    assert all(float(line.split(" | ")[3]) > 0 for line in table)  # bare clips/s of every stage


def test_gpu_check_stops_at_once_without_cuda(monkeypatch):
    import torch

    from model.curation import gpu_check

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit, match="needs a CUDA GPU"):
        gpu_check.main([])
