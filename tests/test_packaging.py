"""The `[vllm]` and `[deepspeed]` extras ask for what the installed TRL's own extras ask for."""

import importlib.metadata
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]


def _trl_extra(extra: str) -> dict[str, str]:
    found = {}
    for line in importlib.metadata.requires("trl") or []:
        req = Requirement(line)
        if req.marker is not None and req.marker.evaluate({"extra": extra}) and \
                not req.marker.evaluate({"extra": "__none__"}):
            found[req.name] = str(req.specifier)
    return found


@pytest.mark.parametrize("extra", ["vllm", "deepspeed"])
def test_gpu_extras_pin_the_versions_trl_supports(extra):
    ours = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"][extra]
    pins = {Requirement(r).name: str(Requirement(r).specifier) for r in ours}
    trl = _trl_extra(extra)
    assert trl, f"the installed TRL has no [{extra}] extra"
    for name, specifier in trl.items():
        assert name in pins and set(pins[name].split(",")) == set(specifier.split(",")), (name, pins, trl)
