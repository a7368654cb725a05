from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def tiny_model_dir() -> Path:
    """The tiny random-weight model configs/cpu-vllm.yaml serves (built once, ~10 s)."""
    from deployments.tiny_model import build

    return build(str(ROOT / ".run" / "tiny-magistral"))
