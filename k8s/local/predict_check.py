"""POST held-out digits to a served TrainingRun and print the accuracy (make e2e-local).

    python k8s/local/predict_check.py URL TRAININGRUN.yaml [--count N] [--min-accuracy A]
    python k8s/local/predict_check.py URL TRAININGRUN.yaml --loop SECONDS   # fault phase

The digits are the run's validation split (``raykube.data``: the same seeded split the
training held out), sent as ``{"instances": [...]}`` in batches like any client would.
``--loop`` keeps sending one request at a time for SECONDS (or until the file given by
``--stop-file`` exists) and prints how many failed: a rollout must fail none.
Exit status: 0 when the accuracy reaches --min-accuracy (and, with --loop, no request failed).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import urllib.error
import urllib.request


def post(url: str, instances: list, timeout: float = 30.0) -> dict:
    req = urllib.request.Request(f"{url.rstrip('/')}/predict", method="POST",
                                 data=json.dumps({"instances": instances}).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as r:  # 4xx/5xx raise HTTPError
        return json.loads(r.read())


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("url")
    p.add_argument("spec")
    p.add_argument("--count", type=int, default=200, help="held-out digits to send")
    p.add_argument("--batch", type=int, default=50)
    p.add_argument("--min-accuracy", type=float, default=0.9)
    p.add_argument("--loop", type=float, default=0.0, help="seconds of one-at-a-time requests")
    p.add_argument("--stop-file", default=None)
    args = p.parse_args()

    from raykube import data as rk_data
    from raykube.spec import load_one

    run = load_one(args.spec)
    _, _, vx, vy = rk_data._digits(run.spec)  # the run's held-out split, normalised
    n = min(args.count, len(vx))
    x, y = vx[:n].tolist(), vy[:n].tolist()

    if args.loop:
        ok = failed = correct = 0
        checkpoints: dict[str, int] = {}
        deadline = time.monotonic() + args.loop
        i = 0
        while time.monotonic() < deadline:
            if args.stop_file and os.path.exists(args.stop_file):
                break
            try:
                answer = post(args.url, [x[i % n]], timeout=10)
                ok += 1
                correct += int(answer["predictions"][0]["class"] == y[i % n])
                ck = str(answer.get("checkpoint"))
                checkpoints[ck] = checkpoints.get(ck, 0) + 1
            except (urllib.error.URLError, OSError, ValueError, KeyError) as exc:
                failed += 1
                print(f"  request {i} failed: {exc}", file=sys.stderr, flush=True)
            i += 1
            time.sleep(0.2)
        acc = correct / ok if ok else 0.0
        print(f"requests: {ok} answered, {failed} failed; accuracy {acc:.4f}; "
              f"answered by checkpoints: {json.dumps(checkpoints)}")
        return 0 if failed == 0 and ok and acc >= args.min_accuracy else 1

    t0 = time.monotonic()
    correct = 0
    ck = None
    for i in range(0, n, args.batch):
        answer = post(args.url, x[i:i + args.batch])
        ck = answer.get("checkpoint")
        correct += sum(int(pr["class"] == t) for pr, t in zip(answer["predictions"],
                                                               y[i:i + args.batch], strict=True))
    acc = correct / n
    print(f"held-out digits: {correct}/{n} correct, accuracy {acc:.4f} "
          f"({time.monotonic() - t0:.2f} s; checkpoint {ck})")
    return 0 if acc >= args.min_accuracy else 1


if __name__ == "__main__":
    sys.exit(main())
