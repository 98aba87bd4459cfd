"""``serving.guards``: Host allow-list, same-origin checks, token before body, body limits, 500 answers (issue 13)."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest
from fastapi import FastAPI, Request
from fastapi.testclient import TestClient
from helpers.project import repo_params
from starlette.exceptions import HTTPException as StarletteHTTPException

from visionloop.params import validate_params
from visionloop.serving.app import _http_error
from visionloop.serving.guards import RequestGuard, internal_error
from visionloop.serving.schemas import FeedbackRequest

TOKEN = "s3cret"
SECRET_PATH = "/srv/visionloop/secret/manifest.csv"


def make_app(token: str | None = None, **serving: object) -> FastAPI:
    limits = {"max_body_bytes": 1000, "max_payload_bytes": 5000}
    params = validate_params(repo_params({"serving": {**limits, **serving}}), "test params")
    app = FastAPI()
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, internal_error)
    app.add_middleware(RequestGuard, serving=params.serving, token=token)
    app.state.reads = 0

    @app.post("/feedback")
    def feedback(body: FeedbackRequest) -> dict[str, str]:
        return {"label": body.label}

    @app.post("/predict")
    async def predict(request: Request) -> dict[str, int]:
        return {"size": len(await request.body())}

    @app.post("/label/review/apply")
    def apply() -> dict[str, bool]:
        return {"applied": True}

    @app.get("/broken")
    def broken() -> None:
        raise RuntimeError(f"File at path {SECRET_PATH} does not exist.")

    return app


@pytest.fixture
def client() -> Iterator[TestClient]:
    with TestClient(make_app(), base_url="http://127.0.0.1:8000", raise_server_exceptions=False) as c:
        yield c


FEEDBACK = {"prediction_id": "p1", "label": "7"}


def test_only_allowed_hosts_are_served() -> None:
    app = make_app(allowed_hosts=["vision.internal"])
    for base, status in [("http://127.0.0.1:8000", 200), ("http://localhost", 200), ("http://[::1]:8000", 200),
                         ("http://vision.internal:8000", 200), ("http://attacker.example:8000", 400)]:
        response = TestClient(app, base_url=base).post("/label/review/apply")
        assert response.status_code == status, base
        assert response.headers["x-request-id"]
    refused = TestClient(app, base_url="http://attacker.example").post("/label/review/apply").json()
    assert "attacker.example" in refused["detail"] and "serving.allowed_hosts" in refused["detail"]
    assert TestClient(make_app(allowed_hosts=["*"]), base_url="http://any.example").post("/label/review/apply").is_success


def test_cross_site_and_simple_posts_are_refused_but_same_origin_and_curl_uploads_pass(client: TestClient) -> None:
    foreign = {"Origin": "http://attacker.example"}
    assert client.post("/label/review/apply", headers=foreign).status_code == 403
    assert client.post("/label/review/apply", headers={"Origin": "null"}).status_code == 403
    assert client.post("/label/review/apply", headers={"Referer": "http://attacker.example/x"}).status_code == 403
    assert client.post("/label/review/apply", headers={"Origin": "http://127.0.0.1:9999"}).status_code == 403
    form = client.post("/label/review/apply", data={"x": "1"})  # a cross-site <form> that sent no Origin
    assert form.status_code == 403 and "application/json" in form.json()["detail"]
    plain = client.post("/feedback", content=b"{}", headers={"content-type": "text/plain"})
    assert plain.status_code == 403
    assert client.post("/predict", files={"files": ("a.png", b"x")}, headers=foreign).status_code == 403
    # what the pages and scripts send
    same = {"Origin": "http://127.0.0.1:8000"}
    assert client.post("/label/review/apply", headers=same).status_code == 200
    assert client.post("/label/review/apply", data={"x": "1"}, headers=same).status_code == 200
    referer = {"Referer": "http://127.0.0.1:8000/label"}
    assert client.post("/feedback", json=FEEDBACK, headers=referer).status_code == 200
    assert client.post("/predict", files={"files": ("a.png", b"x")}).status_code == 200  # curl -F: no Origin
    assert client.post("/feedback", json=FEEDBACK).status_code == 200
    assert client.get("/broken", headers=foreign).status_code == 500  # reads are not state-changing


def test_with_a_token_a_post_without_it_is_refused_before_its_body_is_read() -> None:
    consumed: list[bytes] = []

    def body() -> Iterator[bytes]:
        for _ in range(100):
            consumed.append(b"x" * 100)
            yield consumed[-1]

    client = TestClient(make_app(token=TOKEN), base_url="http://127.0.0.1")
    refused = client.post("/feedback", content=body(), headers={"content-type": "application/json"})
    assert refused.status_code == 401 and refused.json()["detail"] == "missing or invalid bearer token"
    assert refused.headers["www-authenticate"] == "Bearer"
    assert len(consumed) <= 1  # the TestClient's transport pulls the first chunk before sending
    wrong = client.post("/feedback", json=FEEDBACK, headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401
    assert client.post("/feedback", json=FEEDBACK, headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200


def test_bodies_are_limited_while_they_stream(client: TestClient) -> None:
    def chunks(n: int, size: int = 500) -> Iterator[bytes]:
        yield from (b"x" * size for _ in range(n))

    declared = client.post("/feedback", content=b"x" * 5000, headers={"content-type": "application/json"})
    assert declared.status_code == 413 and "serving.max_body_bytes" in declared.json()["detail"]
    streamed = client.post("/feedback", content=chunks(3), headers={"content-type": "application/json"})
    assert streamed.status_code == 413 and "1,000 bytes" in streamed.json()["detail"]
    upload = client.post("/predict", content=chunks(12), headers={"content-type": "application/json"})
    assert upload.status_code == 413 and "serving.max_payload_bytes" in upload.json()["detail"]
    assert client.post("/predict", content=chunks(9)).json() == {"size": 4500}  # /predict's own, larger limit


def test_an_unexpected_error_is_logged_and_answered_with_a_request_id_only(
    client: TestClient, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.ERROR, logger="visionloop.serving.guards"):
        response = client.get("/broken")
    assert response.status_code == 500
    body = response.json()
    assert body == {"detail": "internal error", "request_id": response.headers["x-request-id"]}
    assert SECRET_PATH not in response.text and "RuntimeError" not in response.text
    logged = [r for r in caplog.records if body["request_id"] in r.getMessage()]
    assert logged and logged[0].exc_info is not None and SECRET_PATH in str(logged[0].exc_info[1])
