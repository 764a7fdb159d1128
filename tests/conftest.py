import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))


@pytest.fixture(scope="session")
def export_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("exports")


@pytest.fixture(scope="session")
def exported(export_dir):
    """spec -> (onnx path, torch model, input size), each exported once per session."""
    import zoo

    cache = {}

    def get(spec):
        if spec not in cache:
            cache[spec] = zoo.export(spec, export_dir)
        return cache[spec]

    return get
