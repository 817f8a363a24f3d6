"""The examples users copy are valid objects of the API, within every bound admission checks."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from modelloop.api import KINDS

EXAMPLES = sorted((Path(__file__).resolve().parents[1] / "manifests" / "examples").glob("*.yaml"))
SPEC_MODELS = {info.kind: info.spec_model for info in KINDS}


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_every_example_object_is_a_valid_spec(path: Path) -> None:
    objects = [doc for doc in yaml.safe_load_all(path.read_text()) if doc]
    assert objects
    for obj in objects:
        model = SPEC_MODELS[obj["kind"]]
        model.model_validate(obj["spec"], context={"name": obj["metadata"]["name"]})
