"""/docs and /redoc from the shipped files, the schema's Try-it-out defaults, and the security headers."""

import re

import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from app.settings import Settings


@pytest.fixture(scope="module")
def client():
    """The service without its lifespan: no model is loaded, which these routes do not need."""
    return TestClient(create_app(Settings()))


@pytest.mark.parametrize("route", ["/docs", "/redoc"])
def test_docs_pages_load_only_files_from_the_service(client, route):
    response = client.get(route)
    assert response.status_code == 200
    sources = re.findall(r'(?:src|href)="([^"]+)"', response.text)
    assert sources and all(s.startswith(("/", "data:")) for s in sources), sources
    for source in (s for s in sources if s.startswith("/")):
        asset = client.get(source)
        assert asset.status_code == 200, source
        assert len(asset.content) > 100, source


def test_docs_assets_are_the_real_swagger_ui_and_redoc(client):
    assert b"SwaggerUIBundle" in client.get("/docs-assets/swagger-ui-bundle.js").content
    assert b"Redoc" in client.get("/docs-assets/redoc.standalone.js").content


def test_try_it_out_fills_in_years_only(client):
    """Swagger UI fills every example into the form; years and target_age together are refused."""
    fields = client.get("/openapi.json").json()["components"]["schemas"]["AgeForm"]["properties"]
    assert fields["years"].get("examples") == [30]
    assert fields["target_age"].get("examples") == [None]


@pytest.mark.parametrize("route", ["/", "/docs", "/redoc", "/openapi.json", "/healthz", "/static/app.js"])
def test_every_response_carries_the_security_headers(client, route):
    headers = client.get(route).headers
    policy = headers["content-security-policy"]
    assert "default-src 'self'" in policy and "frame-ancestors 'none'" in policy
    assert "http" not in policy and "'unsafe-eval'" not in policy
    assert headers["x-frame-options"] == "DENY"
    assert headers["x-content-type-options"] == "nosniff"


def test_errors_carry_the_security_headers_too(client):
    response = client.get("/no-such-page")
    assert response.status_code == 404
    assert response.headers["x-content-type-options"] == "nosniff"


def test_the_page_allows_no_inline_script_or_style(client):
    policy = client.get("/").headers["content-security-policy"]
    assert "'unsafe-inline'" not in policy
