"""Issue 15, as a new user meets it: each command run as a subprocess, asserting on what
the terminal shows (exit code, the one line, no traceback). None of these start Ray:
every one of these mistakes is caught before it."""

from __future__ import annotations

import gzip
import io
import os
import subprocess
import sys
from pathlib import Path

import pytest

from raykube.cli import main

HEADER = "apiVersion: raykube.io/v1alpha1\nkind: TrainingRun\n"
QUICKSTART = str(Path(__file__).resolve().parents[2] / "jobs" / "quickstart.yaml")


def cli(*args: str, stdin: str | None = None, cwd: Path | None = None,
        timeout: float = 120) -> subprocess.CompletedProcess:
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    return subprocess.run([sys.executable, "-m", "raykube", *args], input=stdin, text=True,
                          capture_output=True, cwd=cwd, env=env, timeout=timeout)


def one_error_line(p: subprocess.CompletedProcess, *needles: str) -> str:
    """The command failed with exactly one line on stderr holding every needle."""
    assert p.returncode != 0, (p.stdout, p.stderr)
    assert "Traceback" not in p.stderr + p.stdout, p.stderr
    lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, p.stderr
    for n in needles:
        assert n in lines[0], (n, lines[0])
    return lines[0]


def spec_file(tmp_path: Path, body: str, name: str = "run.yaml") -> str:
    f = tmp_path / name
    f.write_text(HEADER + body)
    return str(f)


# -------------------------------------------------------------- 17: validate / render
MULTI = """metadata: {name: a}
spec:
  model: {name: mlp}
  data: {dataset: digits}
  train: {epochs: 1e9, batchSiz: 32}
---
""" + HEADER + """metadata: {name: b}
spec:
  model: null
  data: {dataset: digits}
"""


def test_validate_reports_every_bad_document_with_its_index_bounds_and_hints(tmp_path):
    f = spec_file(tmp_path, MULTI)
    p = cli("validate", f)
    assert p.returncode == 1 and "Traceback" not in p.stderr
    err = p.stderr
    assert f"{f}[0]: spec.train.epochs: must be a whole number between 1 and 100000" in err
    assert f"{f}[0]: spec.train.batchSiz: unknown field (did you mean 'batchSize'?)" in err
    assert f"{f}[1]: spec.model: is empty (null)" in err
    assert "valid integer" not in err and "valid dictionary" not in err


def test_validate_reads_stdin(tmp_path):
    good = Path(QUICKSTART).read_text()
    assert cli("validate", "-", stdin=good).returncode == 0
    p = cli("validate", "-", stdin=HEADER + MULTI)
    assert p.returncode == 1 and "<stdin>[1]: spec.model" in p.stderr


def test_validate_refuses_the_duplicate_names_render_refuses(tmp_path):
    """Two files (or two documents) with one run name passed ``validate`` while
    ``render`` refused them: a CI that only validated let one run overwrite the other."""
    (tmp_path / "jobs").mkdir()
    for name in ("a.yaml", "b.yml"):
        (tmp_path / "jobs" / name).write_text(Path(QUICKSTART).read_text())
    p = cli("validate", str(tmp_path / "jobs"))
    assert p.returncode == 1 and "Traceback" not in p.stderr
    assert p.stderr.splitlines()[0] == (
        f"{tmp_path}/jobs/b.yml: metadata.name: TrainingRun 'quickstart' (namespace default) "
        f"is already defined in {tmp_path}/jobs/a.yaml; names must be unique"), p.stderr
    assert p.stdout == f"{tmp_path}/jobs/a.yaml: valid\n"
    # another namespace is another run; the same file named twice is one
    (tmp_path / "jobs" / "b.yml").write_text(
        Path(QUICKSTART).read_text().replace("name: quickstart", "name: quickstart\n  namespace: ml", 1))
    assert cli("validate", str(tmp_path / "jobs"), str(tmp_path / "jobs" / "a.yaml")).returncode == 0


def test_run_of_a_directory_says_to_give_a_file(tmp_path):
    """``raykube run jobs/`` said "a directory with no .yaml, .yml or .json file" of a
    directory holding 74 of them."""
    (tmp_path / "one").mkdir()
    (tmp_path / "one" / "q.yaml").write_text(Path(QUICKSTART).read_text())
    one_error_line(cli("run", str(tmp_path / "one")),
                   f"a directory, not a file: give the file itself ({tmp_path}/one/q.yaml)")
    (tmp_path / "one" / "r.yml").write_text(Path(QUICKSTART).read_text())
    one_error_line(cli("run", str(tmp_path / "one")),
                   "give one of its 2 .yaml/.yml/.json files")
    (tmp_path / "empty").mkdir()
    one_error_line(cli("run", str(tmp_path / "empty")),
                   "a directory with no .yaml, .yml or .json file (its subdirectories are not read")


def test_render_refuses_duplicate_names_and_a_missing_output_directory(tmp_path):
    # two files defining one run (the same file named twice is read once)
    copy = tmp_path / "copy.yaml"
    copy.write_text(Path(QUICKSTART).read_text())
    one_error_line(cli("render", QUICKSTART, str(copy)),
                   "'quickstart'", f"already defined in {QUICKSTART}")
    one_error_line(cli("render", QUICKSTART, "-o", str(tmp_path / "no" / "x.yaml")),
                   "cannot write", "No such file or directory")


def test_render_refuses_empty_option_values():
    """``-n "$NS"`` with NS unset rendered into the file's namespace (``default``) with
    exit 0; ``--image ""`` and ``--checkpoint ""`` fell back to the defaults as silently."""
    for flag in ("--namespace", "--image", "--checkpoint"):
        p = cli("render", QUICKSTART, flag, "")
        one_error_line(p, f"raykube render: {flag} is empty")
        assert p.returncode == 2 and p.stdout == ""


def test_render_names_the_option_behind_a_bad_namespace_or_image():
    p = cli("render", QUICKSTART, "-n", "ML")
    one_error_line(p, "metadata.namespace: must be a DNS label", "(got 'ML') (from --namespace)")
    p = cli("render", QUICKSTART, "--image", "a b")
    one_error_line(p, "spec.image: 'a b' is not a valid image reference", "(from --image)")


def test_render_checkpoint_is_one_checkpoint_for_one_served_run():
    """``--checkpoint`` with several served runs put the same checkpoint (one model) in
    every RayService: cifar10's served the quickstart's digits MLP. With none served it
    did nothing. Both exit 0 before; now one line, exit 2, nothing on stdout."""
    jobs = sorted(str(f) for f in Path(QUICKSTART).parent.glob("*.yaml"))
    p = cli("render", *jobs, "--checkpoint", "s3://bkt/quickstart/best")
    one_error_line(p, f"--checkpoint 's3://bkt/quickstart/best': {len(jobs)} TrainingRuns are served",
                   "quickstart", "cifar10-cnn", "render the run it belongs to on its own")
    assert p.returncode == 2 and p.stdout == ""
    p = cli("render", QUICKSTART, "--no-serve", "--checkpoint", "/mnt/raykube/default/q/best")
    one_error_line(p, "no RayService is rendered")
    assert p.returncode == 2 and p.stdout == ""
    # one served run: its checkpoint (an s3:// one, for a run on a volume, with the Secret
    # its serving pods read it with)
    p = cli("render", QUICKSTART, "--checkpoint", "s3://bkt/quickstart/best",
            "--checkpoint-secret", "s3-creds")
    assert p.returncode == 0 and "checkpoint: s3://bkt/quickstart/best" in p.stdout
    assert "name: s3-creds" in p.stdout
    # a path off the run's volume is only there if the image holds it: a note, rendered
    # anyway (a baked-in model is a real use); on the volume, no note
    p = cli("render", QUICKSTART, "--checkpoint", "/etc/model")
    assert p.returncode == 0 and "checkpoint: /etc/model" in p.stdout
    assert p.stderr.strip() == ("raykube render: note: --checkpoint '/etc/model' is not on "
                                "quickstart's volume (mounted at /mnt/raykube): the serving "
                                "pods find it only if the image holds it")
    p = cli("render", QUICKSTART, "--checkpoint", "/mnt/raykube/default/q/best")
    assert p.returncode == 0 and p.stderr == ""
    p = cli("render", QUICKSTART, "--checkpoint", "/mnt/raykube/../../etc")  # was no note
    assert p.returncode == 0 and "is not on quickstart's volume" in p.stderr, p.stderr


@pytest.mark.parametrize(("value", "needle"), [
    ("relative/best", "is a relative path, which the serving pods cannot resolve"),
    ("~/best", "is a relative path"),
    (" /mnt/raykube/default/quickstart/best", "leading or trailing spaces"),
    ("/mnt/raykube/default/quickstart/best\n", "leading or trailing spaces"),
    ("/mnt/raykube/x\tbest", "a control character"),
])
def test_render_refuses_a_checkpoint_the_serving_pods_cannot_find(value, needle):
    p = cli("render", QUICKSTART, "--checkpoint", value)
    line = one_error_line(p, needle)
    assert line.startswith("raykube render: --checkpoint ") and p.stdout == ""
    if "relative" in needle:
        assert "/mnt/raykube/default/quickstart" in line  # where the run's checkpoints are


def test_render_to_a_full_disk_is_one_line():
    with open("/dev/full", "w") as full:
        p = subprocess.run([sys.executable, "-m", "raykube", "render", QUICKSTART],
                           stdout=full, stderr=subprocess.PIPE, text=True, timeout=120)
    assert p.returncode == 1
    assert p.stderr.strip() == "raykube render: cannot write the output: No space left on device"


def test_render_never_writes_over_its_own_input(tmp_path):
    spec = tmp_path / "run.yaml"
    spec.write_text(Path(QUICKSTART).read_text())
    before = spec.read_text()
    (tmp_path / "link.yaml").symlink_to(spec)  # the same file by another name
    p = cli("render", str(spec), "-o", str(tmp_path / "link.yaml"))
    one_error_line(p, f"--out {tmp_path}/link.yaml is an input file")
    assert spec.read_text() == before


def test_render_reads_a_run_beside_its_secret(tmp_path):
    """A file holding the Secret a run's secretRef names and the run itself, as kubectl
    takes it: render renders the run and says what it left for kubectl (the Secret is
    not echoed to the output)."""
    f = tmp_path / "run.yaml"
    f.write_text("apiVersion: v1\nkind: Secret\nmetadata: {name: minio}\n"
                 "stringData: {AWS_SECRET_ACCESS_KEY: s3cret}\n---\n"
                 + Path(QUICKSTART).read_text())
    p = cli("render", str(f))
    assert p.returncode == 0, p.stderr
    assert "kind: RayJob" in p.stdout and "s3cret" not in p.stdout
    assert p.stderr.strip() == ("raykube render: not rendered (not TrainingRuns): "
                                "Secret/minio; apply them as they are")


# ------------------------------------------------------------- 6, 13: image folders
def _png(path: Path, value: int) -> None:
    import numpy as np
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((8, 8, 3), value, dtype=np.uint8)).save(path)


def _folder_spec(tmp_path: Path, uri: str) -> str:
    return spec_file(tmp_path, f"""metadata: {{name: folder}}
spec:
  model: {{name: mlp}}
  data: {{dataset: image-folder, uri: {uri}, imageSize: 8}}
  train: {{epochs: 1}}
""")


def test_a_corrupt_image_is_one_line_naming_it_before_ray_starts(tmp_path):
    for cls in ("cat", "dog"):
        for i in range(3):
            _png(tmp_path / "imgs" / cls / f"{i}.png", 40 * i)
    bad = tmp_path / "imgs" / "dog" / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    # data.uri is relative to the spec file, not to the working directory (17)
    f = _folder_spec(tmp_path, "imgs")
    line = one_error_line(cli("run", f, "--storage", str(tmp_path / "runs"), cwd=Path("/")),
                          str(bad), "not a readable image", "remove or replace it")
    assert line.startswith("raykube run: ")
    assert "BytesIO" not in line and "0x" not in line, line  # PIL named its buffer
    # a folder that is not there: no pyarrow "[Errno 2] ... Detail:" in the line
    missing = _folder_spec(tmp_path, "nothing-here")
    line = one_error_line(cli("run", missing, "--storage", str(tmp_path / "runs")),
                          "nothing-here: no such folder")
    assert "Errno" not in line and "Detail" not in line, line


def test_empty_class_folders_warn_and_one_class_is_refused(tmp_path):
    _png(tmp_path / "imgs" / "cat" / "0.png", 10)
    (tmp_path / "imgs" / "dog").mkdir()
    (tmp_path / "imgs" / "bird").mkdir()
    f = _folder_spec(tmp_path, str(tmp_path / "imgs"))
    p = cli("run", f, "--storage", str(tmp_path / "runs"))
    assert p.returncode == 1 and "Traceback" not in p.stderr
    assert "class folder 'dog' holds no images" in p.stderr
    assert "class folder 'bird' holds no images" in p.stderr
    assert "at least 2 classes with images; found ['cat'] (empty: bird, dog)" in p.stderr


def test_an_image_folder_split_that_leaves_a_worker_nothing_is_refused_before_ray(tmp_path):
    """Two images per class and a validation fraction of 0.9: the hashed split keeps
    fewer training images than the two workers; it trained nothing and 'succeeded'."""
    for cls in ("cat", "dog"):
        for i in range(2):
            _png(tmp_path / "imgs" / cls / f"{i}.png", 40 * i)
    f = _folder_spec(tmp_path, "imgs")
    Path(f).write_text(Path(f).read_text().replace("imageSize: 8}", "imageSize: 8, validationFraction: 0.9}"))
    line = one_error_line(cli("run", f, "--storage", str(tmp_path / "runs")),
                          "spec.data.validationFraction: leaves ", "for 2 workers",
                          "lower validationFraction", "has 4 images")
    assert line.startswith("raykube run: ")


# -------------------------------------------------------- 15: corrupt pre-seeded data
def test_a_corrupt_preseeded_download_names_the_file_and_leaves_no_tmp(tmp_path):
    from raykube.data import FASHION_FILES

    raw = tmp_path / "runs" / "datasets" / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    for name in FASHION_FILES:
        (raw / f"{name}.gz").write_bytes(gzip.compress(os.urandom(4000))[:2000])  # truncated
    f = spec_file(tmp_path, "metadata: {name: fm}\nspec:\n  model: {name: mlp}\n"
                            "  data: {dataset: fashion-mnist}\n")
    line = one_error_line(cli("run", f, "--storage", str(tmp_path / "runs")),
                          "fails its checksum", "expected", "replace it")
    assert "could not be downloaded" not in line
    assert not list(raw.glob("*.tmp")) and not list(raw.glob("*-ubyte"))  # nothing half-made


def test_a_corrupt_cifar_archive_says_checksum_not_download(tmp_path):
    cache = tmp_path / "runs" / "datasets"
    cache.mkdir(parents=True)
    (cache / "cifar-10-python.tar.gz").write_bytes(b"not the archive")
    f = spec_file(tmp_path, "metadata: {name: c}\nspec:\n  model: {name: cifar-cnn}\n"
                            "  data: {dataset: cifar10}\n")
    one_error_line(cli("run", f, "--storage", str(tmp_path / "runs")),
                   "cifar-10-python.tar.gz fails its checksum", "replace it")


# ------------------------------------------------------------------ 8: serve sizing
def test_serve_fails_fast_when_the_replicas_cannot_fit(tmp_path):
    from raykube.commands.serve import local_ray_cpus
    from raykube.spec import ServeSpec

    four = ServeSpec.model_validate({"replicas": 4})
    assert local_ray_cpus(None, four, machine_cpus=2) == 4  # sized to fit, as run does
    assert local_ray_cpus(None, four, machine_cpus=8) == 8
    with pytest.raises(ValueError, match="--num-cpus 2 cannot hold 4 replica"):
        local_ray_cpus(2, four, machine_cpus=8)


def test_serve_refuses_more_replicas_than_this_machine_holds(tmp_path, capsys):
    """The real `raykube serve` on this machine's /proc/meminfo: 1,000 replicas of even
    a tiny model (torch alone is ~400 MiB each) is one line and exit 2, before Ray starts
    (it printed nothing for minutes while Ray started replicas into no room)."""
    import torch

    from raykube.checkpoint import save_checkpoint
    from raykube.spec import parse_spec

    spec = parse_spec({"model": {"name": "mlp", "options": {"hidden": [4]}},
                       "data": {"dataset": "digits"}}).spec
    from raykube.models import build_model

    model = build_model(spec.model, (1, 8, 8), 10)
    ckpt = save_checkpoint(tmp_path / "checkpoint_epoch_0001", model=model,
                           optimizer=torch.optim.Adam(model.parameters()), epoch=1,
                           spec=spec.to_dict(), class_names=[str(i) for i in range(10)],
                           input_shape=[1, 8, 8], metrics={"valAccuracy": 0.5})
    assert main(["serve", str(ckpt), "--replicas", "1000"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("raykube serve: 1000 replica(s) need at least")


# ---------------------------------------------------------- 12, 17: paths, overrides
def test_storage_tilde_and_spec_relative_data_uri(tmp_path, monkeypatch):
    from raykube.commands._util import local_path, resolve_data_uri
    from raykube.spec import load_one

    monkeypatch.setenv("HOME", str(tmp_path))
    assert local_path("~/runs") == str(tmp_path / "runs")
    assert local_path("s3://bkt/p") == "s3://bkt/p"
    f = _folder_spec(tmp_path, "imgs")
    assert resolve_data_uri(load_one(f), f).spec.data.uri == str(tmp_path / "imgs")
    # data.cacheDir too (it was relative to the working directory, unlike data.uri)
    Path(f).write_text(Path(f).read_text().replace("imageSize: 8}", "imageSize: 8, cacheDir: c}"))
    data = resolve_data_uri(load_one(f), f).spec.data
    assert (data.uri, data.cache_dir) == (str(tmp_path / "imgs"), str(tmp_path / "c"))
    Path(f).write_text(Path(f).read_text().replace("cacheDir: c}", "cacheDir: ~/c}"))
    assert resolve_data_uri(load_one(f), f).spec.data.cache_dir == str(tmp_path / "c")


def test_render_refuses_a_relative_data_path_a_pod_cannot_resolve(tmp_path):
    f = _folder_spec(tmp_path, "imgs")
    p = cli("render", f)
    line = one_error_line(p, "spec.data.uri: 'imgs' is a relative path, which a pod cannot "
                          "resolve (locally it is relative to the spec file); give an absolute "
                          "path on the shared volume (under /mnt/raykube) or an s3:// URI")
    assert line.startswith(f"{f}: ") and p.stdout == ""


def test_printed_paths_and_curl_are_never_wrapped():
    from rich.console import Console

    from raykube.display import RichDisplay, artefact_paths
    from raykube.local import curl_command

    run_dir = "/a/very/long/storage/path/that/goes/on/and/on/for/a/while/runs/" + "x" * 60
    result = {"name": "x", "run_dir": run_dir, "best_checkpoint": f"{run_dir}/checkpoint_epoch_0003",
              "epochs": 3, "metrics": {}, "best_metrics": {}}
    assert artefact_paths(result)[0] == ("best checkpoint", f"{run_dir}/best")
    console = Console(width=80, record=True, file=io.StringIO())
    RichDisplay(console).on_end(result)
    text = console.export_text()
    assert f"best checkpoint {run_dir}/best\n" in text
    assert "checkpoint_epoch_0003" not in text
    assert "\n" not in curl_command("http://127.0.0.1:8000", [[0.5] * 64])


def test_the_epoch_line_labels_its_figures():
    from rich.console import Console

    from raykube.display import RichDisplay

    console = Console(width=200, record=True, file=io.StringIO())
    RichDisplay(console).on_epoch({"epoch": 1, "epochs": 2, "samplesPerSecond": 36946.0,
                                   "epochTime": 0.04}, None, None)
    assert "36946 samples/s, 0.04 s/epoch" in console.export_text()


def test_oversubscribed_workers_get_a_note(tmp_path):
    from raykube.commands.run import _oversubscribed
    from raykube.spec import parse_spec

    tr = parse_spec({"model": {"name": "mlp"}, "data": {"dataset": "digits"},
                     "scaling": {"workers": 16}})
    note = _oversubscribed(tr, 2)
    assert note and "16 worker(s) x 1 CPU on a 2-CPU machine" in note and "--workers 2" in note
    assert _oversubscribed(tr, 32) is None


def test_in_process_errors_still_go_to_stderr(tmp_path, capsys):
    """Under pytest's capture nothing is diverted: messages stay where tests read them."""
    assert main(["render", QUICKSTART, "-o", str(tmp_path / "no" / "x")]) == 1
    assert "cannot write" in capsys.readouterr().err


# --------------------------------------------------------------------- 7, 10: Tune
TUNE = """metadata: {name: search}
spec:
  model: {name: mlp}
  data: {dataset: digits}
  train: {epochs: 2, optimizer: {name: adam, lr: 0.01}}
  tune:
    trials: 2
    searchSpace:
      train.batchSize: {choice: [32, 64]}
"""


def test_a_changed_search_is_refused_naming_the_fields_before_ray_starts(tmp_path):
    import json

    from raykube.spec import load_one
    from raykube.tune import MARKER_FILE, _identity

    f = spec_file(tmp_path, TUNE)
    old = _identity(load_one(f).spec)
    exp = tmp_path / "runs" / "search"
    exp.mkdir(parents=True)
    (exp / MARKER_FILE).write_text(json.dumps({"spec": old}))
    Path(f).write_text(Path(f).read_text().replace("lr: 0.01", "lr: 0.1"))
    one_error_line(cli("run", f, "--storage", str(tmp_path / "runs")),
                   f"{exp} holds a search for a different spec",
                   "spec.train.optimizer.lr 0.01 -> 0.1", "another metadata.name")


def test_tune_runs_show_the_trial_table_and_best_trial_not_rays():
    """raykube's table (STOPPED for ASHA-stopped trials), the best trial's parameters
    and its stable checkpoint path; no live table left behind twice."""
    from rich.console import Console

    from raykube.spec import parse_spec
    from raykube.tune import TrialTable

    console = Console(width=100, record=True, file=io.StringIO())
    table = TrialTable(console)
    run = parse_spec({"model": {"name": "mlp"}, "data": {"dataset": "digits"},
                      "train": {"epochs": 2},
                      "tune": {"trials": 2, "searchSpace": {"train.batchSize": {"choice": [32, 64]}}}})
    rows = [{"trial": "a_00000", "params": {"train.batchSize": 32}, "status": "TERMINATED",
             "metric": 0.95, "iterations": 2},
            {"trial": "a_00001", "params": {"train.batchSize": 64}, "status": "STOPPED",
             "metric": 0.4, "iterations": 1}]
    table.on_start(run)
    table.on_trials(rows)
    table.on_failure("trial a_00000: worker failure (rank 0: [bold]ActorDiedError); restarting")
    table.on_end({"trials": rows, "metric": "valAccuracy", "mode": "max", "run_dir": "/r/search",
                  "best_trial": {"trialId": "a_00000", "config": {"train.batchSize": 32},
                                 "metric": 0.95},
                  "best_metrics": {"epoch": 2, "valAccuracy": 0.95, "trainLoss": 0.1}})
    text = console.export_text()
    assert text.count("STOPPED") == 1 and "TERMINATED" in text and "batchSize" in text
    assert "Best trial" in text and "train.batchSize = 32" in text
    assert "best checkpoint /r/search/best" in text
    assert "starting Ray Train workers" not in text
    # a trial's worker failure is a line of its own, its text as it is (no markup)
    assert "trial a_00000: worker failure (rank 0: [bold]ActorDiedError); restarting" in text


def test_make_help_is_plain_text_when_piped():
    """``make help | less`` showed ``\\033[36m`` around every target: colour only on a
    terminal."""
    repo = Path(__file__).resolve().parents[2]
    out = subprocess.run(["make", "-s", "-C", str(repo), "help"], capture_output=True,
                         text=True, check=True).stdout
    assert "\033" not in out
    assert any(line.split()[:1] == ["install"] for line in out.splitlines()), out


@pytest.mark.parametrize("argv,words", [
    (["bench", "train", "--case", "nosuch", "--quick"], "--case 'nosuch': one of cifar10-cnn"),
    (["bench", "train", "--rounds", "0"], "--rounds 0: must be at least 1"),
    (["bench", "operator", "--runs", "-5"], "--runs -5: must be at least 1"),
])
def test_bench_arguments_are_checked_before_measuring(argv, words, capsys):
    """An unknown case was a 7-frame traceback (KeyError); --rounds 0 started measuring."""
    from raykube.cli import main

    assert main(argv) == 2
    err = capsys.readouterr().err
    assert words in err and "Traceback" not in err, err


def test_bench_out_that_is_a_file_is_refused(tmp_path, capsys):
    from raykube.cli import main

    f = tmp_path / "taken"
    f.write_text("x")
    assert main(["bench", "serve", "--quick", "--out", str(f)]) == 2
    assert f"--out {f}: a file, not a folder" in capsys.readouterr().err
