"""Request validation of the serving API, without Ray (the HTTP path is in integration)."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest

from raykube.serve import InputSpec, RequestError, curl_example
from raykube.spec import TrainingRunSpec

SPEC = TrainingRunSpec.model_validate({"model": {"name": "mlp"}, "data": {"dataset": "digits"}})


@pytest.fixture
def inputs() -> InputSpec:
    return InputSpec([1, 8, 8], [str(i) for i in range(10)], SPEC, max_instances=4)


def parse(inputs: InputSpec, doc, ct: str | None = "application/json") -> np.ndarray:
    body = doc if isinstance(doc, bytes) else json.dumps(doc).encode()
    return inputs.parse_body(body, ct)


def test_nested_flat_and_integer_instances(inputs):
    x = np.arange(128, dtype=np.float32).reshape(2, 1, 8, 8) / 100
    a = parse(inputs, {"instances": x.tolist()})
    b = parse(inputs, {"instances": x.reshape(2, 64).tolist()}, "application/json; charset=utf-8")
    c = parse(inputs, {"instances": [[0] * 64]}, None)  # ints; no content-type is JSON
    d = parse(inputs, {"instances": x.reshape(2, 8, 8).tolist()})  # a grey image's rows
    assert a.dtype == np.float32 and a.shape == (2, 1, 8, 8)
    np.testing.assert_array_equal(a, x)
    np.testing.assert_array_equal(b, x)
    np.testing.assert_array_equal(d, x)
    assert c.shape == (1, 1, 8, 8) and not c.any()


@pytest.mark.parametrize("doc,status,word", [
    ({"instances": [[0] * 64] * 5}, 422, "at most 4"),
    ({"instances": [[0] * 64, [0] * 63]}, 422, "ragged"),
    ({"instances": [[[0] * 8] * 7]}, 422, "shape"),
    ({"instances": [[False] * 64]}, 422, "boolean"),
    ({"instances": [[1] * 63 + [True]]}, 422, "boolean"),
    ({"instances": [[10**40] + [0] * 63]}, 422, "too large for float32"),
    ({"instances": [[0] * 63 + [1e300]]}, 422, "instances[0]"),
    ({"instances": [[0] * 64, [0] * 63 + [float("inf")]]}, 422, "instances[1]"),
    ({"instances": "0" * 64}, 422, "list"),
    ({"instance": []}, 422, "'instance'"),
    ({"images": "abc"}, 422, "list"),
    ([1, 2], 422, "object"),
    (b"\x00", 400, "JSON"),
])
def test_refused_with_message(inputs, doc, status, word):
    with pytest.raises(RequestError) as err:
        parse(inputs, doc)
    assert err.value.status == status
    assert word in err.value.message


def test_the_shape_error_names_every_form_it_takes(inputs):
    with pytest.raises(RequestError) as err:
        parse(inputs, {"instances": [[[0] * 7] * 8]})
    assert err.value.message == ("each instance must have shape [1, 8, 8] (or [8, 8], or 64 "
                                 "flat numbers); got [8, 7]")
    rgb = InputSpec([3, 4, 4], ["a", "b"], SPEC)  # no size-1 axis: no short form
    assert rgb.bare_shape is None
    with pytest.raises(RequestError) as err:
        rgb.parse_body(json.dumps({"instances": [[[0] * 4] * 4]}).encode(), None)
    assert err.value.message == ("each instance must have shape [3, 4, 4] (or 48 flat "
                                 "numbers); got [4, 4]")


def test_content_type(inputs):
    for ct in ("text/plain", "multipart/form-data; boundary=x"):
        with pytest.raises(RequestError) as err:
            parse(inputs, {"instances": [[0] * 64]}, ct)
        assert err.value.status == 415
    assert parse(inputs, {"instances": [[0] * 64]}, "application/vnd.api+json").shape[0] == 1


def test_curl_example_is_a_valid_request(inputs):
    cmd = curl_example("http://127.0.0.1:8000", [1, 8, 8])
    assert cmd.startswith("curl -s -X POST http://127.0.0.1:8000/predict")
    payload = cmd.split("-d '", 1)[1].rstrip("'")
    assert parse(inputs, payload.encode()).shape == (1, 1, 8, 8)
    big = curl_example("http://h:1", [3, 224, 224])  # too long to paste: generated instead
    assert "python -c" in big and str(3 * 224 * 224) in big


def test_serve_cli_overrides_checkpoint_serve_section():
    from raykube.commands.serve import serve_spec_for

    ckpt_spec = {"serve": {"enabled": True, "minAccuracy": 0.9, "maxBatchSize": 8,
                           "replicas": 2}}
    args = argparse.Namespace(replicas=None, max_batch_size=64, batch_wait_ms=1.5,
                              max_request_bytes=None)
    s = serve_spec_for(args, ckpt_spec)
    assert (s.replicas, s.max_batch_size, s.batch_wait_timeout_ms) == (2, 64, 1.5)


def test_images_refused_for_feature_models():
    inputs = InputSpec([64], [str(i) for i in range(10)], SPEC)
    assert parse(inputs, {"instances": [[1.0] * 64]}).shape == (1, 64)
    with pytest.raises(RequestError, match="feature vectors"):
        parse(inputs, {"images": ["aGk="]})


def test_line_wrapped_base64_images_are_accepted(inputs):
    """Issue 15 #16: `base64` (GNU without -w0, BSD, MIME clients) wraps at 76 columns;
    both the escaped form (JSON clients) and raw line breaks (curl -d "$(base64 ...)")
    decode to the same image as the unwrapped form."""
    import base64
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray((np.arange(64 * 64 * 3) % 251).astype(np.uint8).reshape(64, 64, 3)).save(buf, "PNG")
    flat = base64.b64encode(buf.getvalue()).decode()
    wrapped = base64.encodebytes(buf.getvalue()).decode()  # a newline every 76 characters
    assert "\n" in wrapped.strip()
    want = parse(inputs, {"images": [flat]})
    np.testing.assert_array_equal(parse(inputs, {"images": [wrapped]}), want)
    raw = ('{"images": ["' + wrapped + '"]}').encode()  # what the shell substitution sends
    np.testing.assert_array_equal(parse(inputs, raw), want)


def _png_header(width: int, height: int) -> bytes:
    """A PNG's signature, IHDR (8-bit grey) and IEND: what Pillow reads to size an image."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(
            ">I", zlib.crc32(kind + data))

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height,
                                                               8, 0, 0, 0, 0))
            + chunk(b"IEND", b""))


def test_odd_requests_get_a_clear_4xx(inputs):
    """From a new user's probe: a 30000x30000 PNG header was "not a decodable image"
    (Pillow's own bomb guard fired before ours); a 5,000-digit integer answered with
    Python's advice to call sys.set_int_max_str_digits(); latin-1 JSON was read as UTF-8."""
    import base64

    bomb = base64.b64encode(_png_header(30000, 30000)).decode()
    with pytest.raises(RequestError) as err:
        parse(inputs, {"images": [bomb]})
    assert err.value.status == 422 and "more than 16777216 pixels" in str(err.value)
    with pytest.raises(RequestError) as err:
        parse(inputs, b'{"instances": [[' + b"9" * 5000 + b"]]}")
    assert err.value.status == 400 and "more than 4300 digits" in str(err.value)
    assert "sys." not in str(err.value)
    for ct in ("application/json; charset=latin-1", "application/json;charset=\"ISO-8859-1\""):
        with pytest.raises(RequestError) as err:
            parse(inputs, {"instances": [[0] * 64]}, ct)
        assert err.value.status == 415 and "JSON is UTF-8" in str(err.value)
    for ct in ("application/json; charset=utf-8", "application/json; charset=UTF-8", None, ""):
        assert parse(inputs, {"instances": [[0] * 64]}, ct).shape[0] == 1


@pytest.fixture(scope="module")
def black_4096_png() -> str:
    """A black 4096x4096 PNG (the per-image limit): ~16 KB of base64 for 16 M pixels."""
    import base64
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("L", (4096, 4096)).save(buf, "PNG")
    return base64.b64encode(buf.getvalue()).decode()


def _count_decodes(monkeypatch) -> list[str]:
    """Records every image decode (Pillow's load) and preprocessing call."""
    from PIL import ImageFile

    import raykube.data

    calls: list[str] = []
    load, preprocess = ImageFile.ImageFile.load, raykube.data.preprocess_image

    def counted_load(self, *a, **kw):
        calls.append("load")
        return load(self, *a, **kw)

    def counted_preprocess(*a, **kw):
        calls.append("preprocess")
        return preprocess(*a, **kw)

    monkeypatch.setattr(ImageFile.ImageFile, "load", counted_load)
    monkeypatch.setattr(raykube.data, "preprocess_image", counted_preprocess)
    return calls


def test_images_over_the_request_pixel_limit_are_refused_before_any_decode(
        black_4096_png, monkeypatch):
    """From the real-pods probe: 192 black 4096x4096 PNGs (4.19 MB, within every other
    limit) froze a replica for 9 s. Their total pixels are refused from the headers."""
    import base64

    cap = 64 * 1024 * 1024  # MAX_REQUEST_PIXELS: four images at the per-image limit
    inputs = InputSpec([1, 8, 8], [str(i) for i in range(10)], SPEC)  # 1,024 instances
    calls = _count_decodes(monkeypatch)
    for images, total in (([black_4096_png] * 192, 192 * 4096 * 4096),
                          # one pixel over: four at the per-image limit and a 1x1 image
                          ([black_4096_png] * 4 + [base64.b64encode(_png_header(1, 1))
                                                   .decode()], cap + 1)):
        with pytest.raises(RequestError) as err:
            parse(inputs, {"images": images})
        assert err.value.status == 422
        assert err.value.message == (f"images hold {total} pixels in all; at most {cap} "
                                     "per request: send fewer or smaller images")
    assert calls == []  # nothing was decoded
    # The per-image limit still answers first, naming the image.
    with pytest.raises(RequestError, match=r"images\[1\] is more than 16777216 pixels"):
        parse(inputs, {"images": [black_4096_png,
                                  base64.b64encode(_png_header(30000, 30000)).decode()]})


def test_images_at_the_request_pixel_limit_are_decoded(black_4096_png, monkeypatch):
    inputs = InputSpec([1, 8, 8], [str(i) for i in range(10)], SPEC)
    calls = _count_decodes(monkeypatch)
    x = parse(inputs, {"images": [black_4096_png] * 4})  # exactly MAX_REQUEST_PIXELS
    assert x.shape == (4, 1, 8, 8) and calls.count("preprocess") == 4
    np.testing.assert_array_equal(x, np.full((4, 1, 8, 8), -1.0, np.float32))  # black


@pytest.mark.parametrize("fmt", ["BMP", "GIF", "TIFF", "WEBP"])
def test_every_format_training_reads_is_served(inputs, fmt):
    """A model trained on a folder of WebP (or BMP, GIF, TIFF) images was refused its own
    files: 422 "not a decodable image (PNG or JPEG expected)". Each decodes to what the
    same picture as a PNG does (GIF: palette-quantised, so a grey picture, which keeps)."""
    import base64
    import io

    from PIL import Image

    grey = Image.fromarray((np.arange(16 * 16) % 251).astype(np.uint8).reshape(16, 16))

    def sent(f: str) -> np.ndarray:
        buf = io.BytesIO()
        grey.save(buf, f, **({"lossless": True} if f == "WEBP" else {}))
        return parse(inputs, {"images": [base64.b64encode(buf.getvalue()).decode()]})

    np.testing.assert_allclose(sent(fmt), sent("PNG"), atol=1e-6)
    with pytest.raises(RequestError, match=r"PNG, JPEG, BMP, GIF, TIFF or WEBP expected"):
        parse(inputs, {"images": [base64.b64encode(b"not an image at all").decode()]})
