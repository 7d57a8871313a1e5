"""Issue 15, end to end: `raykube run` as a subprocess, as a new user drives it.

One run directory tells the story (each `raykube run` starts its own Ray, ~20-60 s
here, so the steps share it):

1. Ctrl-C mid-training (SIGINT to the process group, as a terminal sends it): one line
   saying how many epochs are on storage, matching the newest checkpoint there (#5, #7).
   Meanwhile another Ray instance runs on the machine (#9). This run asks for Ray's
   dashboard (``--dashboard``): its address is printed and answers while training.
2. The same file with a new ``lr``: continues right after the saved epochs, says the new
   lr applies, and the optimizer in the next checkpoint has it (#1, #5).
3. adam -> sgd with the newest checkpoint truncated: one note each, the truncated epoch
   trained again once, a fresh sgd optimizer, no crash (#2, #7).
4. ``--epochs`` below what is trained: "nothing to train", result.json untouched (#3).
5. The same with ``serve: {enabled: true}`` and ``--serve``: the best checkpoint is
   served until Ctrl-C, taken here by one of Ray's threads rather than the main one.

Every successful run prints raykube's lines only; Ray's go to the run's raykube.log (#11).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from raykube.resume import cannot_restore

pytestmark = pytest.mark.integration

SPEC = """apiVersion: raykube.io/v1alpha1
kind: TrainingRun
metadata: {name: newuser}
spec:
  model: {name: mlp, options: {hidden: [16]}}
  data: {dataset: digits}
  train:
    epochs: 200
    batchSize: 64
    optimizer: {name: adam, lr: 3e-3}
  scaling: {workers: 1}
  checkpoint: {keep: 10, scoreMetric: valAccuracy}
"""
# keep: 10 keeps every checkpoint of these few epochs, so that step 3 below, which cuts
# off the newest, finds the one before it. (With keep: 1 the run would rightly have
# deleted it: that step once passed only because the checkpoint written just before the
# Ctrl-C was missing from Ray Train's list and nothing pruned it.)
# Lines that must never reach the terminal of a successful run (issue 15 #11).
NOISE = ["Traceback", "View the dashboard", "Token authentication", "core_worker.cc",
         "graceful_shutdown", "WARNING", "multiple active Ray instances", "(raylet)",
         "PreemptionWatcher", "pid="]


def _env() -> dict[str, str]:
    """A user's fresh terminal: none of the Ray settings this test session put in its own
    environment (its Ray's address, the HAProxy stats/metrics ports its Serve holds, which a
    second Serve inheriting them could not bind, and the rest of its tuning)."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("RAY_", "RAYKUBE_")) and k not in ("OMP_NUM_THREADS",)}
    env["RAY_USAGE_STATS_ENABLED"] = "0"
    return env


def run_cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "raykube", "run", *args], text=True,
                          capture_output=True, env=_env(), timeout=timeout)


# A terminal's foreground job starts with SIGINT at its default, whatever started this
# test session: pytest run in the background of a non-interactive shell (`make test &`, a
# CI runner) inherits SIGINT *ignored*, and so would every child, so a Ctrl-C sent to the
# group would be lost (the run trains on and exits 0; serve never stops).
AS_FOREGROUND_JOB = ("import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); "
                     "os.execv(sys.executable, [sys.executable, '-m', 'raykube', *sys.argv[1:]])")
AS_BACKGROUND_JOB = AS_FOREGROUND_JOB.replace("SIG_DFL", "SIG_IGN")  # `cmd &` in a script


@contextlib.contextmanager
def in_terminal(*args: str, sigint_ignored: bool = False, cwd: Path | None = None):
    """``raykube ARGS`` as a terminal's foreground job: its own process group, so a
    SIGINT to the group is the user's Ctrl-C; always reaped, so no run or Serve instance
    outlives its test holding ports or CPUs. ``sigint_ignored``: as a non-interactive
    shell starts a background job (SIGINT ignored, inherited through exec)."""
    job = AS_BACKGROUND_JOB if sigint_ignored else AS_FOREGROUND_JOB
    p = subprocess.Popen([sys.executable, "-c", job, *args], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, env=_env(), start_new_session=True,
                         cwd=cwd)
    try:
        yield p
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait(30)


def ctrl_c_taken_by_another_thread(p: subprocess.Popen) -> None:
    """Ctrl-C as the kernel sometimes delivers it: the process group gets SIGINT, and in
    raykube's own process a thread other than the main one takes it (any thread that does
    not block SIGINT may; Ray's gRPC and core-worker threads do not). A terminal does this
    only now and then, so the test picks the thread itself (``tgkill``); it stands in for
    the kernel's choice, the rest is real."""
    import ctypes

    def takes_sigint(task: Path) -> bool:
        blocked = next(ln for ln in (task / "status").read_text().splitlines()
                       if ln.startswith("SigBlk:"))
        return not int(blocked.split()[1], 16) & (1 << (signal.SIGINT - 1))

    tasks = sorted(Path(f"/proc/{p.pid}/task").iterdir(), key=lambda t: int(t.name))
    other = next(t for t in tasks if t.name != str(p.pid) and takes_sigint(t))
    assert ctypes.CDLL(None, use_errno=True).syscall(234, p.pid, int(other.name),  # tgkill
                                                     signal.SIGINT) == 0
    for proc in Path("/proc").iterdir():  # the rest of the group: Ray's processes
        with contextlib.suppress(OSError, ValueError):
            if proc.name.isdigit() and int(proc.name) != p.pid and os.getpgid(int(proc.name)) == p.pid:
                os.kill(int(proc.name), signal.SIGINT)


def clean(p: subprocess.CompletedProcess) -> None:
    """Success, and nothing but raykube's own lines."""
    assert p.returncode == 0, p.stdout + p.stderr
    for word in NOISE:
        assert word not in p.stdout + p.stderr, (word, p.stdout, p.stderr)
    assert p.stderr.count("raykube.log") == 1, p.stderr  # the log path, once


def epochs_trained(p: subprocess.CompletedProcess) -> list[int]:
    return [int(m) for m in re.findall(r"^epoch +(\d+)/", p.stdout, flags=re.M)]


def newest(run_dir: Path) -> Path:
    return max(run_dir.glob("checkpoint_epoch_*"), key=lambda d: json.loads(
        (d / "meta.json").read_text())["epoch"] if (d / "meta.json").exists() else -1)


def optimizer_of(ckpt: Path) -> tuple[str, dict]:
    import torch

    payload = torch.load(ckpt / "checkpoint.pt", weights_only=True)
    return payload["spec"]["train"]["optimizer"]["name"], payload["optimizer"]["param_groups"][0]


@pytest.fixture
def other_ray():
    """Another Ray instance on this machine, as when `raykube serve` runs in another
    terminal (issue 15 #9)."""
    p = subprocess.Popen([sys.executable, "-c", "import ray, time; ray.init(address='local', "
                          "num_cpus=1, include_dashboard=False); print('up', flush=True); "
                          "time.sleep(3600)"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                         text=True, env=_env(), start_new_session=True)
    assert p.stdout.readline().strip() == "up"
    yield p
    os.killpg(p.pid, signal.SIGTERM)
    p.wait(timeout=60)


def said_interrupted(p: subprocess.Popen, run_dir: Path, seen: list[str]) -> int:
    """The interrupted run's end: exit 130, no traceback, and the one line saying how
    many epochs are on storage (the newest checkpoint's) and where a re-run continues.
    Returns that epoch."""
    rest, err = p.communicate(timeout=120)
    assert p.returncode == 130, (seen, rest, err)
    assert "Traceback" not in err + rest
    saved = json.loads((newest(run_dir) / "meta.json").read_text())["epoch"]
    assert f"interrupted: {run_dir} has {saved} of 200 epochs; running the same command " \
           f"again continues from epoch {saved + 1}" in err, err
    return saved


def read_until(p: subprocess.Popen, prefix: str) -> list[str]:
    """The command's output lines up to the first that starts with ``prefix``. Its output
    ending before that line fails the test with that output and stderr (a server that
    never served says why, not the "connection refused" of the request after it)."""
    out = []
    for line in p.stdout:
        out.append(line)
        if line.startswith(prefix):
            return out
    pytest.fail(f"the output ended before a line {prefix!r}: {out}, {p.communicate(timeout=60)}")


def test_ctrl_c_twice_still_says_what_is_saved(tmp_path):
    """Two Ctrl-C 0.3 s apart (an impatient user): the second one, landing while Ray
    stopped, printed a bare ``interrupted`` instead of the saved epochs (a fault probe)."""
    import time

    spec = tmp_path / "run.yaml"
    spec.write_text(SPEC)
    storage = tmp_path / "runs"
    seen = []
    with in_terminal("run", str(spec), "--storage", str(storage)) as p:
        for line in p.stdout:
            seen.append(line)
            if line.startswith("epoch   3/"):
                os.killpg(p.pid, signal.SIGINT)
                time.sleep(0.3)
                os.killpg(p.pid, signal.SIGINT)
                break
        said_interrupted(p, storage / "newuser", seen)


def test_interrupt_resume_with_edits_and_nothing_to_train(tmp_path, other_ray):
    spec = tmp_path / "run.yaml"
    spec.write_text(SPEC)
    storage = tmp_path / "runs"
    run_dir = storage / "newuser"

    # -- 1. Ctrl-C after a few epochs
    seen = []
    dashboard = None
    with in_terminal("run", str(spec), "--storage", str(storage), "--dashboard") as p:
        for line in p.stdout:
            seen.append(line)
            if line.startswith("Ray dashboard: "):
                dashboard = line.split(": ", 1)[1].strip()
                assert dashboard.startswith("http://127.0.0.1:"), line
            if line.startswith("epoch   1/"):  # training: the dashboard's page answers
                assert dashboard is not None, seen
                with urllib.request.urlopen(dashboard, timeout=30) as page:
                    assert page.status == 200 and b"<html" in page.read()
            if line.startswith("epoch   3/"):
                os.killpg(p.pid, signal.SIGINT)
                break
        saved = said_interrupted(p, run_dir, seen)
    assert "multiple active Ray instances" not in (run_dir / "raykube.log").read_text()

    # -- 2. a new lr: applied from the next epoch, saved and used alike
    spec.write_text(SPEC.replace("lr: 3e-3", "lr: 5e-2"))
    p = run_cli(str(spec), "--storage", str(storage), "--epochs", str(saved + 1))
    clean(p)
    assert f"train.optimizer changed (lr 0.003 -> 0.05): applied to the restored adam " \
           f"optimizer from epoch {saved + 1}" in p.stdout
    assert epochs_trained(p) == [saved + 1], p.stdout
    name, group = optimizer_of(newest(run_dir))
    assert name == "adam" and group["lr"] == pytest.approx(0.05)
    assert f"best checkpoint {run_dir}/best\n" in p.stdout  # whole, stable path (#12)

    # -- 3. adam -> sgd, and the newest checkpoint truncated meanwhile: the truncated
    # one is skipped with a note and its epoch trained again, once; a fresh sgd
    # optimizer, not a crash
    bad = newest(run_dir)
    weights = bad / "checkpoint.pt"
    weights.write_bytes(weights.read_bytes()[:1000])
    spec.write_text(SPEC.replace("{name: adam, lr: 3e-3}", "{name: sgd, lr: 0.02, momentum: 0.8}"))
    p = run_cli(str(spec), "--storage", str(storage), "--epochs", str(saved + 2))
    clean(p)
    assert f"skipping {bad.name}: it cannot be read" in p.stdout
    assert "train.optimizer.name changed (adam -> sgd)" in p.stdout
    assert epochs_trained(p) == [saved + 1, saved + 2], p.stdout
    name, group = optimizer_of(newest(run_dir))
    assert name == "sgd" and group["momentum"] == pytest.approx(0.8)
    assert json.loads((newest(run_dir) / "meta.json").read_text())["epoch"] == saved + 2
    result = (run_dir / "result.json").read_text()
    # best/ is never the truncated one, though Ray's own list still ranks it
    assert cannot_restore(str(run_dir / "best")) is None
    assert json.loads(result)["best_checkpoint"] != str(bad)

    # -- 4. fewer epochs than trained: nothing starts, nothing is rewritten
    p = run_cli(str(spec), "--storage", str(storage), "--epochs", "2")
    clean(p)
    assert f"{run_dir} already has {saved + 2} epochs (asked for 2): nothing to train" in p.stdout
    assert not epochs_trained(p)
    assert (run_dir / "result.json").read_text() == result
    assert cannot_restore(str(run_dir / "best")) is None

    # -- 5. serving it with --serve until Ctrl-C, which one of Ray's threads takes; the
    # spec's serve.enabled is false (the default): --serve serves it anyway (it ended
    # without a word)
    assert "serve:" not in spec.read_text()
    port = free_port()
    with in_terminal("run", str(spec), "--storage", str(storage), "--epochs", str(saved + 2),
                     "--serve", "--port", str(port)) as p:
        seen = read_until(p, "serving until Ctrl-C")
        assert any(f"served at http://127.0.0.1:{port}" in ln for ln in seen), seen
        body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metadata", timeout=30).read()
        best = json.loads((run_dir / "best" / "meta.json").read_text())
        assert json.loads(body)["epoch"] == best["epoch"]
        ctrl_c_taken_by_another_thread(p)
        rest, err = p.communicate(timeout=120)
    assert p.returncode == 0, (seen, rest, err)
    assert "Traceback" not in "".join(seen) + rest + err
    assert (run_dir / "result.json").read_text() == result


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def untrained_digits_checkpoint(ckpt: Path) -> Path:
    """A small MLP's checkpoint for the digits, saved without training (what serving
    needs is its files, not its accuracy)."""
    from raykube.checkpoint import save_checkpoint
    from raykube.models import build_model
    from raykube.spec import parse_spec

    spec = parse_spec({"model": {"name": "mlp", "options": {"hidden": [8]}},
                       "data": {"dataset": "digits"}}).spec
    save_checkpoint(ckpt, model=build_model(spec.model, (1, 8, 8), 10), optimizer=None, epoch=1,
                    spec=spec.to_dict(), class_names=[str(i) for i in range(10)],
                    input_shape=[1, 8, 8], metrics={"valAccuracy": 0.5})
    return ckpt


@pytest.mark.parametrize("to", ["process", "group", "sigint ignored"])
def test_sigterm_stops_serve_as_ctrl_c_does(tmp_path, to):
    """``kill PID`` or a container stop of `raykube serve`: Serve and Ray are stopped
    and the port is free again, exit 0 after "stopping", as with Ctrl-C. To the whole
    process group (``timeout``), it killed Ray under Serve: 38 s to stop, and Serve's
    HAProxy stayed, holding the port. Started with SIGINT ignored (``raykube serve &`` in
    a script, nohup), SIGTERM re-sent as SIGINT did nothing: only SIGKILL stopped it.
    (A SIGTERM while Ray starts is the same Ctrl-C: ``test_ray_local.py``.)"""
    ckpt = untrained_digits_checkpoint(tmp_path / "ckpt")
    port = free_port()
    ignoring = to == "sigint ignored"
    with in_terminal("serve", str(ckpt), "--port", str(port), sigint_ignored=ignoring) as p:
        read_until(p, "Ctrl-C to stop")
        assert b'"epoch"' in urllib.request.urlopen(f"http://127.0.0.1:{port}/metadata",
                                                    timeout=30).read()
        (os.killpg if to == "group" else os.kill)(p.pid, signal.SIGTERM)
        rest, err = p.communicate(timeout=120)
    assert p.returncode == 0 and rest.strip().endswith("stopping"), (p.returncode, rest, err)
    assert "Traceback" not in rest + err, err
    import socket

    with socket.socket() as s:  # no listener of Serve's is left on it
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as servers bind (TIME_WAIT)
        s.bind(("127.0.0.1", port))
        s.listen()


def test_serve_fits_its_replicas_and_keeps_rays_output_off_the_terminal(tmp_path):
    """`raykube serve --replicas 3` on a small machine: Ray is sized for the replicas
    instead of waiting forever (#8); the terminal shows raykube's lines only and the curl
    line is whole (#11, #12); Ctrl-C stops it cleanly, also when one of Ray's threads
    rather than the main one takes the SIGINT (it slept on through it, now and then)."""

    ckpt = untrained_digits_checkpoint(tmp_path / "ckpt")
    port = free_port()
    # a relative path, as typed: answered as the absolute one (it said 'ckpt')
    with in_terminal("serve", "ckpt", "--port", str(port), "--replicas", "3",
                     cwd=tmp_path) as p:
        out = read_until(p, "Ctrl-C to stop")
        body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metadata", timeout=30).read()
        assert json.loads(body)["checkpoint"] == str(ckpt), body
        ctrl_c_taken_by_another_thread(p)
        rest, err = p.communicate(timeout=120)
    text = "".join(out) + rest
    assert p.returncode == 0, (text, err)
    for word in NOISE:
        assert word not in text + err, (word, text, err)
    curl = [ln for ln in text.splitlines() if ln.startswith("curl ")]
    assert len(curl) == 1 and curl[0].rstrip().endswith("'"), text
    assert err.count(".log (-v shows it here)") == 1, err


TUNE_SPEC = """apiVersion: raykube.io/v1alpha1
kind: TrainingRun
metadata: {name: newuser-tune}
spec:
  model: {name: mlp, options: {hidden: [16]}}
  data: {dataset: digits}
  train: {epochs: 4, batchSize: 64, optimizer: {name: adam, lr: 3e-3}}
  scaling: {workers: 1}
  tune:
    trials: 2
    maxConcurrentTrials: 1
    searchSpace:
      train.batchSize: {choice: [32, 64]}
  checkpoint: {keep: 1}
"""


def test_ctrl_c_during_a_tune_search_then_the_same_command_resumes_it(tmp_path):
    """Ctrl-C once a trial has saved a checkpoint: a line at once that it is stopping,
    then one saying the search resumes when the same command runs again, exit 130, no
    traceback and none of Ray's advice for API users (`Tuner.restore(...)`) (#7). The same command then finishes the search
    with raykube's lines only: the trial table, the best trial, a `best/` (#4, #10)."""
    spec = tmp_path / "tune.yaml"
    spec.write_text(TUNE_SPEC)
    storage = tmp_path / "runs"
    run_dir = storage / "newuser-tune"
    with in_terminal("run", str(spec), "--storage", str(storage)) as p:
        deadline = time.monotonic() + 240
        while not any(run_dir.rglob("checkpoint_epoch_*")) and p.poll() is None:
            assert time.monotonic() < deadline, "no trial saved a checkpoint in 240 s"
            time.sleep(0.5)
        assert p.poll() is None, p.communicate()
        os.killpg(p.pid, signal.SIGINT)
        out, err = p.communicate(timeout=120)
    assert p.returncode == 130, (out, err)
    # said at once: Tune's own line went to Ray's log only, and ending the trials took
    # 5-13 s with nothing on the screen
    from raykube.tune import STOPPING_NOTE

    assert STOPPING_NOTE in out, (out, err)
    assert f"interrupted: the search in {run_dir} resumes when you run the same command " \
           f"again" in err, err
    for word in ("Traceback", "Tuner.restore", "tune.Tuner", "resume_errored"):
        assert word not in out + err, (word, out, err)
    # Ray Train's checkpoint list of the trial that saved one, as a kill mid-write leaves
    # it (Ray rewrites it in place): the resumed trial must not fail on it
    snapshots = list(run_dir.glob("trial-*/train/checkpoint_manager_snapshot.json"))
    assert snapshots, sorted(str(p) for p in run_dir.rglob("*"))
    for snapshot in snapshots:
        snapshot.write_bytes(b"")

    p = run_cli(str(spec), "--storage", str(storage))
    clean(p)
    assert "Best trial" in p.stdout and f"best checkpoint {run_dir}/best" in p.stdout, p.stdout
    assert f"resuming the interrupted search in {run_dir}: " in p.stdout, p.stdout
    result = json.loads((run_dir / "result.json").read_text())
    assert len(result["trials"]) == 2, result
    assert not [t for t in result["trials"] if t["status"] == "ERROR"], result["trials"]
    assert (run_dir / "best").is_dir()


@pytest.mark.parametrize("to", ["process", "group"])
def test_sigterm_ends_a_run_as_ctrl_c_does(tmp_path, to):
    """``kill PID``, ``docker stop``: SIGTERM to the process alone. Ray's driver handler
    made it a bare ``sys.exit(15)``: the run ended without a word (and a search without
    saving its state). Now it is Ctrl-C: what is saved, exit 130. ``timeout`` and ``kill
    -- -PGID`` signal the whole process group: that killed Ray's GCS and raylet under the
    run (60 s of waiting, exit 1, nothing said); now the same as to the process."""
    spec = tmp_path / "run.yaml"
    spec.write_text(SPEC.replace("newuser", "term"))
    run_dir = tmp_path / "runs" / "term"
    with in_terminal("run", str(spec), "--storage", str(tmp_path / "runs")) as p:
        seen = []
        for line in p.stdout:
            seen.append(line)
            if line.startswith("epoch   2/"):
                (os.kill if to == "process" else os.killpg)(p.pid, signal.SIGTERM)
                break
        said_interrupted(p, run_dir, seen)


def test_ctrl_c_pressed_again_and_again_still_ends_in_one_line(tmp_path):
    """Four Ctrl-C 0.3 s apart: the later ones came while the run stopped Ray, and one
    reached Ray's exit hook: a ``KeyboardInterrupt`` traceback and exit 1 (3 of 3 in a
    user's audit). Now exit 130, "interrupted", no traceback."""
    spec = tmp_path / "run.yaml"
    spec.write_text(SPEC.replace("newuser", "again"))
    with in_terminal("run", str(spec), "--storage", str(tmp_path / "runs")) as p:
        for line in p.stdout:
            if line.startswith("epoch   2/"):
                break
        for _ in range(4):
            os.killpg(p.pid, signal.SIGINT)
            time.sleep(0.3)
        rest, err = p.communicate(timeout=120)
    assert p.returncode == 130, (rest, err)
    assert "Traceback" not in rest + err and "interrupted" in err, err


def test_a_gpu_run_on_a_machine_without_those_gpus_says_so_at_once(tmp_path):
    """Before this check such a run printed its header and waited without end (Ray
    Train retries its worker group's start every 60 s). 32 GPUs: no test machine has
    them, so this holds on a GPU machine too."""
    spec = tmp_path / "gpu.yaml"
    spec.write_text(SPEC.replace("scaling: {workers: 1}",
                                 "scaling: {workers: 2, gpusPerWorker: 16}"))
    p = run_cli(str(spec), "--storage", str(tmp_path / "runs"), timeout=120)
    assert p.returncode == 1, p.stdout + p.stderr
    err = [ln for ln in p.stderr.strip().splitlines() if not ln.startswith("Ray's output")]
    assert len(err) == 1 and err[0].startswith("raykube run: the run needs 32 GPU(s) "
                                               "(scaling: 2 worker(s) x gpusPerWorker 16)"), err
    assert "Ray sees" in err[0] and "Traceback" not in p.stdout + p.stderr
    assert not list((tmp_path / "runs" / "newuser").glob("checkpoint_*"))
