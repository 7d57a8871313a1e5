"""The serve suite's hand-written baseline: FastAPI, JSON in, one model call, JSON out.

Kept in its own module without ``from __future__ import annotations``: FastAPI reads the
endpoint's annotations at runtime to recognise the ``Request`` parameter.
"""

import json

import numpy as np
import torch
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from raykube.checkpoint import load_model


def fastapi_app(checkpoint: str) -> FastAPI:
    """What a user would write by hand to serve a checkpoint (1 torch thread, no batching)."""
    torch.set_num_threads(1)
    model, meta = load_model(checkpoint)
    app = FastAPI()

    @app.get("/healthz")
    async def healthz() -> dict:
        return {"status": "ok"}

    @app.post("/predict")
    async def predict(request: Request) -> JSONResponse:
        doc = json.loads(await request.body())
        x = np.asarray(doc["instances"], dtype=np.float32)
        with torch.inference_mode():
            probs = torch.softmax(model(torch.from_numpy(x)), dim=1).numpy()
        return JSONResponse({"predictions": [
            {"class": int(c), "label": meta.class_names[int(c)], "probabilities": p}
            for c, p in zip(probs.argmax(1), probs.tolist(), strict=True)]})

    return app
