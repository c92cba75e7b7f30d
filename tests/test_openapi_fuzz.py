"""Property-based run of the whole OpenAPI schema with schemathesis, in-process: every generated request
gets a documented status (never a 5xx), a documented content type and a body matching its schema."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.python import asgi
from schemathesis.specs.openapi.checks import positive_data_acceptance

from serve.app import create_app
from tests.builders import encode_image, noise_image

pytestmark = pytest.mark.slow  # about 10 s

EXAMPLES_PER_OPERATION = 40
UPLOADS = {"POST /predict", "POST /reconstruct"}
APP = create_app()  # an app of its own, not the shared client fixture's
# From the dict: from_asgi would start the lifespan at import, before FLOWERLAB_ROOT is set.
SCHEMA = schemathesis.openapi.from_dict(APP.openapi())
CASES: Counter[str] = Counter()
IMAGE = encode_image(noise_image(), "PNG")


@pytest.fixture(scope="module", autouse=True)
def lifespan(served_root: Path) -> Iterator[None]:
    """FLOWERLAB_ROOT for the lifespan schemathesis starts at the first request; stopped at the end."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("FLOWERLAB_ROOT", str(served_root))
        yield
        asgi.shutdown_lifespans()
    print(f"schemathesis cases per operation: {dict(CASES)}, {sum(CASES.values())} in all")


@SCHEMA.parametrize()
@settings(max_examples=EXAMPLES_PER_OPERATION, deadline=None, derandomize=True,
          suppress_health_check=list(HealthCheck))
def test_every_operation_conforms_to_its_schema(case: schemathesis.Case) -> None:
    label = case.operation.label
    CASES[label] += 1
    # A schema cannot say "bytes that decode as an image": schema-valid bytes may be refused as not an
    # image (415) or corrupt (422), both documented; every other check holds for uploads too.
    excluded = [positive_data_acceptance] if label in UPLOADS else []
    response = case.call_and_validate(app=APP, excluded_checks=excluded)
    if label in UPLOADS and case.meta is not None and case.meta.generation.mode.is_positive:
        assert response.status_code in (200, 413, 415, 422), response.text
        # What the schema offers as valid is never refused for being empty.
        assert "the uploaded file is empty" not in response.text
        if isinstance(case.body, dict) and "file" in case.body:
            # The same request with bytes that are an image, and the default k: 200, and it conforms.
            image = case.operation.Case(body={**case.body, "file": IMAGE}, media_type=case.media_type)
            answer = image.call_and_validate(app=APP)
            assert answer.status_code == 200, answer.text
            CASES["image uploads"] += 1
