"""model/hub.py: local folders, the Hugging Face cache, and one error naming every missing model."""

from __future__ import annotations

import time

import pytest
from huggingface_hub import constants

from model.hub import MissingWeights, missing, require, resolve

COMMIT = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    """A Hugging Face cache holding one snapshot of `acme/tiny-model`, laid out as the hub client writes it."""
    cache = tmp_path / "hub"
    repo = cache / "models--acme--tiny-model"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(COMMIT)
    snapshot = repo / "snapshots" / COMMIT
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text("{}")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    return snapshot


def test_a_local_folder_resolves_to_itself(tmp_path):
    assert resolve(str(tmp_path)) == str(tmp_path)


def test_a_cached_hub_id_resolves_to_its_snapshot(hub_cache):
    assert resolve("acme/tiny-model") == str(hub_cache)


def test_an_uncached_hub_id_raises_missing_weights_with_the_way_to_get_it(hub_cache):
    with pytest.raises(MissingWeights) as error:
        resolve("acme/absent-model")
    message = str(error.value)
    assert "acme/absent-model" in message and "not in the Hugging Face cache" in message
    assert "make weights" in message and "local folder" in message


def test_a_missing_local_path_says_so(tmp_path):
    with pytest.raises(MissingWeights, match="no such local folder"):
        resolve(str(tmp_path / "nowhere"))


def test_missing_lists_only_the_absent_models_fast(hub_cache, tmp_path):
    refs = {
        "mllm": "acme/tiny-model",
        "dit": "acme/absent-model",
        "vae": str(tmp_path / "nowhere"),
        "here": str(tmp_path),
    }
    started = time.perf_counter()
    absent = missing(refs)
    assert time.perf_counter() - started < 5
    assert absent == ["dit (acme/absent-model)", f"vae ({tmp_path / 'nowhere'})"]


def test_require_names_every_missing_model_in_one_error(hub_cache, tmp_path):
    refs = {"mllm": "acme/tiny-model", "dit": "acme/absent-model", "vae": str(tmp_path / "nowhere")}
    with pytest.raises(MissingWeights) as error:
        require(refs)
    assert error.value.missing == {"dit": "acme/absent-model", "vae": str(tmp_path / "nowhere")}
    assert "dit: acme/absent-model" in str(error.value) and "vae: " in str(error.value)
    assert "mllm" not in str(error.value)


def test_require_returns_local_folders_when_all_are_there(hub_cache, tmp_path):
    assert require({"mllm": "acme/tiny-model", "dit": str(tmp_path)}) == {"mllm": str(hub_cache), "dit": str(tmp_path)}
