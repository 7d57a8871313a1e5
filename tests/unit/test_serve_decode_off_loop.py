"""A serving replica keeps answering while it decodes a request's images (found by the
real-pods probe: one request of 192 big PNGs held ``/healthz`` for 9 s, twelve of them
timed out the kubelet's probes and other requests). The replica's class runs here in
this process, on an asyncio loop, without Ray: its ``__call__`` gets starlette Requests.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import threading

import numpy as np
import pytest
from starlette.requests import Request

SPEC = {"model": {"name": "mlp", "options": {"hidden": [16]}}, "data": {"dataset": "digits"}}


@pytest.fixture(scope="module")
def replica(tmp_path_factory):
    """The Classifier deployment's class on an untrained digits MLP (no Ray)."""
    from raykube.checkpoint import save_checkpoint
    from raykube.models import build_model
    from raykube.serve import Classifier
    from raykube.spec import TrainingRunSpec

    spec = TrainingRunSpec.model_validate(SPEC)
    model = build_model(spec.model, (1, 8, 8), 10)
    ckpt = save_checkpoint(tmp_path_factory.mktemp("ckpt") / "checkpoint_000001", model=model,
                           optimizer=None, epoch=1, spec=spec.to_dict(),
                           class_names=[str(i) for i in range(10)], input_shape=(1, 8, 8))
    return Classifier.func_or_class(str(ckpt), max_batch_size=4, batch_wait_timeout_ms=1.0)


def request(method: str, path: str, body: bytes = b"") -> Request:
    sent = False

    async def receive():
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    headers = [(b"content-type", b"application/json"),
               (b"content-length", str(len(body)).encode())]
    scope = {"type": "http", "method": method, "path": path, "root_path": "",
             "query_string": b"", "headers": headers}
    return Request(scope, receive)


def _png(u8: np.ndarray) -> str:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(u8, mode="L").save(buf, "PNG")
    return base64.b64encode(buf.getvalue()).decode()


def test_healthz_and_metadata_answer_while_images_decode(replica, monkeypatch):
    import raykube.data

    entered, release, left = threading.Event(), threading.Event(), threading.Event()
    released: list[bool] = []
    preprocess = raykube.data.preprocess_image

    def blocking_preprocess(*a, **kw):  # a decode that takes as long as the test wants
        entered.set()
        released.append(release.wait(3))  # bounded: the test fails, never hangs
        left.set()
        return preprocess(*a, **kw)

    monkeypatch.setattr(raykube.data, "preprocess_image", blocking_preprocess)
    images = json.dumps({"images": [_png(np.full((64, 64), 255, np.uint8))]}).encode()

    async def scenario():
        big = asyncio.create_task(replica(request("POST", "/predict", images)))
        for _ in range(300):  # until the decode has begun (without blocking the loop)
            if entered.is_set():
                break
            await asyncio.sleep(0.01)
        health = await asyncio.wait_for(replica(request("GET", "/healthz")), 2)
        # (a second /predict would go to serve.batch, which needs a real replica: the
        # integration tests send images and instances together through Ray Serve)
        other = await asyncio.wait_for(replica(request("GET", "/metadata")), 2)
        answered_during_decode = entered.is_set() and not left.is_set()
        release.set()
        return health, other, answered_during_decode, await asyncio.wait_for(big, 10)

    health, other, answered_during_decode, big = asyncio.run(scenario())
    assert health.status_code == 200 and json.loads(health.body)["status"] == "ok"
    assert other.status_code == 200 and json.loads(other.body)["inputShape"] == [1, 8, 8]
    assert answered_during_decode, "/healthz waited for the decode"
    assert released == [True]  # the test let the decode go on, not the 3 s bound
    assert big.status_code == 200, big.body
    assert len(json.loads(big.body)["predictions"]) == 1


def test_requests_over_the_pixel_limit_are_answered_422_without_decoding(replica,
                                                                        monkeypatch):
    import raykube.data

    def no_decode(*a, **kw):
        raise AssertionError("an image was decoded")

    monkeypatch.setattr(raykube.data, "preprocess_image", no_decode)
    from PIL import Image

    buf = io.BytesIO()
    Image.new("L", (4096, 4096)).save(buf, "PNG")
    big = base64.b64encode(buf.getvalue()).decode()
    body = json.dumps({"images": [big] * 192}).encode()
    assert len(body) < 4 * 1024 * 1024  # within maxRequestBytes, as the probe's was
    answer = asyncio.run(replica(request("POST", "/predict", body)))
    assert answer.status_code == 422
    assert json.loads(answer.body) == {"error": "images hold 3221225472 pixels in all; at "
                                                "most 67108864 per request: send fewer or "
                                                "smaller images"}
