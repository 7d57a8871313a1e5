"""Serving over real HTTP: a real local Ray Serve deployment of a real (tiny) checkpoint.

One deployment serves every test of the module (Serve start + replica ~10 s here); the
checkpoint is a small MLP trained in-process on scikit-learn's digits for a few seconds.
"""

from __future__ import annotations

import asyncio
import base64
import gzip
import io
import json
import socket
import time

import httpx
import numpy as np
import pytest
import torch

from raykube.checkpoint import load_model, save_checkpoint
from raykube.data import load_arrays
from raykube.models import build_model
from raykube.spec import ServeSpec, TrainingRunSpec

pytestmark = pytest.mark.integration

PORT = 8765
SPEC = {"model": {"name": "mlp", "options": {"hidden": [32], "dropout": 0.0}},
        "data": {"dataset": "digits"}, "train": {"epochs": 3, "seed": 0}}


def train_digits_checkpoint(directory, *, epochs: int = 3) -> str:
    """Train the tiny MLP on digits with plain torch and save a raykube checkpoint."""
    spec = TrainingRunSpec.model_validate(SPEC)
    arrays = load_arrays(spec, "/tmp")  # digits is bundled: no cache needed
    info = arrays.info
    torch.manual_seed(0)
    model = build_model(spec.model, info.input_shape, info.num_classes)
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    x, y = arrays.train_x, arrays.train_y
    for _ in range(epochs):
        for i in range(0, len(x), 64):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(x[i:i + 64]), y[i:i + 64]).backward()
            opt.step()
    model.eval()
    with torch.no_grad():
        acc = float((model(arrays.val_x).argmax(1) == arrays.val_y).float().mean())
    save_checkpoint(directory, model=model, optimizer=opt, epoch=epochs, spec=spec.to_dict(),
                    class_names=info.class_names, input_shape=info.input_shape,
                    metrics={"valAccuracy": acc})
    return str(directory)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> str:
    return train_digits_checkpoint(tmp_path_factory.mktemp("ckpt") / "checkpoint_000002")


@pytest.fixture(scope="module")
def val_arrays() -> tuple[np.ndarray, np.ndarray]:
    spec = TrainingRunSpec.model_validate(SPEC)
    arrays = load_arrays(spec, "/tmp")
    return arrays.val_x.numpy(), arrays.val_y.numpy()


@pytest.fixture(scope="module")
def server(ray_session, checkpoint):
    from raykube.serve import start_local, stop_local

    # A long batch window makes concurrent requests certainly meet in one batch.
    base = start_local(checkpoint, ServeSpec(maxBatchSize=16, batchWaitTimeoutMs=50.0,
                                             maxRequestBytes=1024 * 1024), port=PORT)
    yield base
    stop_local()


@pytest.fixture(scope="module")
def direct(checkpoint):
    model, _ = load_model(checkpoint)

    def call(x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return torch.softmax(model(torch.from_numpy(np.asarray(x, np.float32))), 1).numpy()

    return call


def post(base: str, body, **kw) -> httpx.Response:
    if not isinstance(body, (bytes, str)):
        body = json.dumps(body)
    headers = kw.pop("headers", {"content-type": "application/json"})
    return httpx.post(f"{base}/predict", content=body, headers=headers, timeout=30, **kw)


def probs_of(resp: httpx.Response) -> np.ndarray:
    assert resp.status_code == 200, resp.text
    return np.array([p["probabilities"] for p in resp.json()["predictions"]])


def test_predictions_equal_direct_model_call(server, direct, val_arrays, checkpoint):
    vx, vy = val_arrays
    x = vx[:20]
    resp = post(server, {"instances": x.tolist()})
    body = resp.json()
    got = probs_of(resp)
    want = direct(x)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    assert [p["class"] for p in body["predictions"]] == want.argmax(1).tolist()
    assert [p["label"] for p in body["predictions"]] == [str(c) for c in want.argmax(1)]
    assert body["checkpoint"] == checkpoint and body["model"] == "mlp"
    # Flat instances (64 numbers each) are the same request.
    flat = probs_of(post(server, {"instances": x.reshape(20, -1).tolist()}))
    np.testing.assert_allclose(flat, got, rtol=1e-6, atol=1e-7)
    # The model is actually good (so the comparison above means something).
    preds = probs_of(post(server, {"instances": vx.tolist()})).argmax(1)
    assert (preds == vy).mean() > 0.8


def test_healthz_and_metadata(server, checkpoint):
    h = httpx.get(f"{server}/healthz")
    assert h.status_code == 200 and h.json()["status"] == "ok"
    m = httpx.get(f"{server}/metadata").json()
    assert m["model"] == "mlp" and m["dataset"] == "digits"
    assert m["inputShape"] == [1, 8, 8] and m["classes"] == [str(i) for i in range(10)]
    assert m["checkpoint"] == checkpoint and m["epoch"] == 3
    assert m["metrics"]["valAccuracy"] > 0.8
    assert m["batching"] == {"maxBatchSize": 16, "batchWaitTimeoutMs": 50.0}
    assert m["device"] == "cpu"
    # The small client helper (used by `raykube run`) speaks the same API.
    from raykube.serve import RequestError, query

    assert len(query(server, np.zeros((3, 64)))["predictions"]) == 3
    with pytest.raises(RequestError, match="shape"):
        query(server, [[0.0] * 5])


def test_concurrent_requests_are_batched_and_agree(server, direct, val_arrays):
    vx, _ = val_arrays
    singles = [vx[i:i + 1] for i in range(24)]
    before = httpx.get(f"{server}/metadata").json()["stats"]

    async def burst() -> list[httpx.Response]:
        async with httpx.AsyncClient(timeout=30) as client:
            return await asyncio.gather(*[
                client.post(f"{server}/predict", json={"instances": s.tolist()})
                for s in singles])

    responses = asyncio.run(burst())
    batched = np.concatenate([probs_of(r) for r in responses])
    after = httpx.get(f"{server}/metadata").json()["stats"]
    # Batches really formed: more requests than model calls, some call held several.
    assert after["requests"] - before["requests"] == 24
    assert after["modelCalls"] - before["modelCalls"] < 24
    assert after["batchedCalls"] > before["batchedCalls"]
    assert after["largestBatch"] >= 2
    # ... and batched answers equal unbatched ones (sequential requests, one by one).
    unbatched = np.concatenate([probs_of(post(server, {"instances": s.tolist()}))
                                for s in singles])
    np.testing.assert_allclose(batched, unbatched, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(batched, direct(np.concatenate(singles)), rtol=1e-5, atol=1e-6)


def _png_b64(u8: np.ndarray, fmt: str = "PNG") -> str:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(u8, mode="L").save(buf, format=fmt)
    return base64.b64encode(buf.getvalue()).decode()


def test_png_images_predict_like_equivalent_instances(server, direct):
    rng = np.random.default_rng(1)
    u8 = rng.integers(0, 256, size=(5, 8, 8), dtype=np.uint8)
    inst = ((u8.astype(np.float32) / 255.0 - 0.5) / 0.5)[:, None]  # training's normalisation
    img = probs_of(post(server, {"images": [_png_b64(a) for a in u8]}))
    np.testing.assert_allclose(img, probs_of(post(server, {"instances": inst.tolist()})),
                               rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(img, direct(inst), rtol=1e-5, atol=1e-6)
    # A larger image is resized to 8x8, as training-time preprocessing does; data: URLs work.
    from PIL import Image

    big = Image.fromarray(np.kron(u8[0], np.ones((4, 4), np.uint8)), mode="L")
    buf = io.BytesIO()
    big.save(buf, format="JPEG")
    url = "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode()
    r = post(server, {"images": [url]})
    assert r.status_code == 200 and len(r.json()["predictions"]) == 1


def test_image_and_instance_requests_together_agree(server, direct):
    """Images decode on the replica's threads while instances go on: sent together,
    every answer is the model's."""
    rng = np.random.default_rng(2)
    u8 = rng.integers(0, 256, size=(16, 8, 8), dtype=np.uint8)
    inst = ((u8.astype(np.float32) / 255.0 - 0.5) / 0.5)[:, None]

    async def together():
        async with httpx.AsyncClient(timeout=30) as client:
            return await asyncio.gather(*[
                client.post(f"{server}/predict", json={"images": [_png_b64(u8[i])]} if i % 2
                            else {"instances": inst[i:i + 1].tolist()})
                for i in range(16)])

    got = np.concatenate([probs_of(r) for r in asyncio.run(together())])
    np.testing.assert_allclose(got, direct(inst), rtol=1e-5, atol=1e-6)


def bad_requests() -> list[tuple[str, object, dict | None, int, str]]:
    """(name, body, headers, expected status, word the error must contain)."""
    ok = [[[0.0] * 8] * 8]
    json_ct = {"content-type": "application/json"}
    deep = "[" * 100000 + "]" * 100000
    return [
        ("not json", b"{instances: [1,2", json_ct, 400, "JSON"),
        ("empty body", b"", json_ct, 400, "empty"),
        ("invalid utf-8", b"\xff\xfe\x00garbage", json_ct, 400, "JSON"),
        ("deeply nested", deep.encode(), json_ct, 400, "nested too deeply"),
        # json.loads on bytes read UTF-16 too (a 200); RFC 8259 says UTF-8
        ("utf-16 body", json.dumps({"instances": [ok]}).encode("utf-16"), json_ct, 400,
         "not UTF-8"),
        ("wrong content-type", json.dumps({"instances": [ok]}).encode(),
         {"content-type": "text/plain"}, 415, "content-type"),
        ("form content-type", b"instances=1", {"content-type": "application/x-www-form-urlencoded"},
         415, "application/json"),
        ("gzip body", gzip.compress(json.dumps({"instances": [ok]}).encode()),
         {**json_ct, "content-encoding": "gzip"}, 415, "content-encoding"),
        ("top-level list", [ok], json_ct, 422, "object"),
        ("missing keys", {}, json_ct, 422, "instances"),
        ("unknown key", {"instances": [ok], "extra": 1}, json_ct, 422, "extra"),
        ("both keys", {"instances": [ok], "images": ["x"]}, json_ct, 422, "either"),
        ("instances not a list", {"instances": 3}, json_ct, 422, "list"),
        ("empty instances", {"instances": []}, json_ct, 422, "empty"),
        ("wrong shape", {"instances": [[[0.0] * 7] * 8]}, json_ct, 422, "shape"),
        ("wrong flat length", {"instances": [[0.0] * 63]}, json_ct, 422, "64"),
        ("ragged", {"instances": [[0.0] * 64, [0.0] * 10]}, json_ct, 422, "ragged"),
        ("strings", {"instances": [["a"] * 64]}, json_ct, 422, "string"),
        ("numeric strings", {"instances": [["1.5"] * 64]}, json_ct, 422, "string"),
        ("nulls", {"instances": [[None] + [0.0] * 63]}, json_ct, 422, "numbers"),
        ("booleans", {"instances": [[True] + [0.0] * 63]}, json_ct, 422, "boolean"),
        ("objects", {"instances": [{"x": 1}]}, json_ct, 422, "numbers"),
        ("NaN", b'{"instances": [[NaN' + b", 0" * 63 + b"]]}", json_ct, 422, "NaN"),
        ("Infinity", b'{"instances": [[0' + b", 0" * 62 + b", -Infinity]]}", json_ct, 422,
         "infinity"),
        ("float32 overflow", {"instances": [[1e39] + [0.0] * 63]}, json_ct, 422, "float32"),
        ("too many instances", {"instances": [[0.0] * 64] * 1025}, json_ct, 422, "at most"),
        ("oversize body", {"instances": [[0.123456789] * 64] * 2000}, json_ct, 413, "limit"),
        ("image not base64", {"images": ["%%%not-base64%%%"]}, json_ct, 422, "base64"),
        ("image undecodable", {"images": [base64.b64encode(b"GIF89a not really").decode()]},
         json_ct, 422, "decodable"),
        ("image not a string", {"images": [123]}, json_ct, 422, "base64 string"),
        ("images empty", {"images": []}, json_ct, 422, "empty"),
        # five black 4096x4096 PNGs (~80 KB): over MAX_REQUEST_PIXELS, refused undecoded
        ("images over the pixel limit", {"images": [_black_4096_png()] * 5}, json_ct, 422,
         "pixels in all"),
    ]


def _black_4096_png() -> str:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("L", (4096, 4096)).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def test_bad_requests_get_4xx_and_replica_survives(server, val_arrays, direct):
    vx, _ = val_arrays
    corpus = bad_requests()
    assert len(corpus) >= 15
    for name, body, headers, status, word in corpus:
        r = post(server, body, headers=headers)
        assert r.status_code == status, f"{name}: {r.status_code} {r.text[:200]}"
        assert r.headers["content-type"].startswith("application/json"), name
        err = r.json()["error"]
        assert word.lower() in err.lower(), f"{name}: {err!r} does not mention {word!r}"
        # The replica keeps answering good requests after every bad one.
        good = probs_of(post(server, {"instances": vx[:2].tolist()}))
        np.testing.assert_allclose(good, direct(vx[:2]), rtol=1e-5, atol=1e-6)
    # A chunked body (no content-length) is cut off at the limit while it streams in.
    chunked = httpx.post(f"{server}/predict", content=iter([b" " * 600_000] * 2),
                         headers={"content-type": "application/json"}, timeout=30)
    assert chunked.status_code == 413 and "maxRequestBytes" in chunked.json()["error"]
    # Other routes and methods.
    get = httpx.get(f"{server}/predict")
    assert get.status_code == 405 and get.headers["allow"] == "POST"  # RFC 9110 15.5.6
    post_ = httpx.post(f"{server}/healthz")
    assert post_.status_code == 405 and post_.headers["allow"] == "GET, HEAD"
    # 200,000 unknown keys were all said back: a 2 MB answer
    many = httpx.post(f"{server}/predict", json={f"k{i}": 1 for i in range(20_000)})
    assert many.status_code == 422 and len(many.content) < 400, many.content[:400]
    assert "and 19,995 more" in many.json()["error"]
    nf = httpx.get(f"{server}/nope")
    assert nf.status_code == 404 and "/predict" in nf.json()["error"]


def _raw(base: str, head: bytes, body: bytes) -> socket.socket:
    host, port = base.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=60)
    sock.sendall(head + body)
    return sock


def _stats(base: str) -> dict:
    return httpx.get(f"{base}/metadata", timeout=30).json()["stats"]


def test_a_stalled_upload_gets_408_and_a_vanished_client_is_no_error(server, val_arrays):
    """A body that trickles in held a replica slot for as long as its client kept it up
    (HAProxy's timeouts count silence, not progress): 300 such clients kept /healthz
    unanswered for 198 s (a probe). Now the body has BODY_GRACE_S plus its size at
    BODY_MIN_BYTES_PER_S, then 408. A client that closes mid-body was logged with a
    traceback and counted in stats.errors."""
    from raykube.serve import BODY_GRACE_S, BODY_MIN_BYTES_PER_S

    head = (b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 100000\r\n\r\n")
    before = _stats(server)
    gone = _raw(server, head, b'{"inst')
    time.sleep(1)
    gone.close()  # half a body, then nothing: the replica's ClientDisconnect
    started = time.monotonic()
    sock = _raw(server, head, b'{"instances": ')
    reply = b""
    while b"\r\n\r\n" not in reply or not reply.rstrip().endswith(b"}"):
        chunk = sock.recv(65536)
        if not chunk:
            break
        reply += chunk
    waited = time.monotonic() - started
    sock.close()
    allowed = BODY_GRACE_S + 100000 / BODY_MIN_BYTES_PER_S
    assert reply.startswith(b"HTTP/1.1 408"), reply[:300]
    assert b"request body too slow: 14 of 100000 bytes" in reply, reply
    assert allowed - 1 <= waited <= allowed + 10, waited
    vx, _ = val_arrays
    assert post(server, {"instances": vx[:1].tolist()}).status_code == 200
    after = _stats(server)
    assert after["disconnects"] == before["disconnects"] + 1, after
    assert after["errors"] == before["errors"] + 1, (before, after)  # the 408 alone


def test_bad_request_never_poisons_a_batch(server, val_arrays, direct):
    """Bad and good requests sent together: every good one is answered correctly."""
    vx, _ = val_arrays

    async def mixed():
        async with httpx.AsyncClient(timeout=30) as client:
            reqs = []
            for i in range(16):
                body = {"instances": vx[i:i + 1].tolist()} if i % 2 else \
                    {"instances": [[float("nan")] * 64]} if i % 4 else {"instances": [[1] * 5]}
                reqs.append(client.post(f"{server}/predict", content=json.dumps(body),
                                        headers={"content-type": "application/json"}))
            return await asyncio.gather(*reqs)

    rs = asyncio.run(mixed())
    for i, r in enumerate(rs):
        if i % 2:
            np.testing.assert_allclose(probs_of(r), direct(vx[i:i + 1]), rtol=1e-5, atol=1e-6)
        else:
            assert r.status_code == 422, r.text


def test_app_builder_args(checkpoint):
    from raykube.serve import app_builder

    app = app_builder({"checkpoint": checkpoint, "maxBatchSize": 8, "batchWaitTimeoutMs": 2,
                       "maxRequestBytes": 65536})
    assert type(app).__name__ == "Application"
    with pytest.raises(ValueError, match="maxBatchSize"):
        app_builder({"checkpoint": checkpoint, "maxBatchSize": 0})
    with pytest.raises(ValueError, match="bogus"):
        app_builder({"checkpoint": checkpoint, "bogus": 1})
    with pytest.raises(ValueError, match="checkpoint"):
        app_builder({})
