"""raykube.resume: Ray Train's checkpoint list, when a killed run left it unreadable."""

from __future__ import annotations

import json

import pytest

from raykube.resume import TRAIN_SNAPSHOT, drop_unusable_train_snapshot


def test_the_file_name_is_ray_trains():
    from ray.train.v2._internal.constants import CHECKPOINT_MANAGER_SNAPSHOT_FILENAME

    assert TRAIN_SNAPSHOT == CHECKPOINT_MANAGER_SNAPSHOT_FILENAME


@pytest.mark.parametrize(("content", "what"), [
    (b"", "was empty"),
    (b"  \n", "was empty"),
    (b'{"checkpoint_results": [{"checkpoint_dir', "could not be parsed (40 bytes)"),
    (b"[]", "could not be parsed (2 bytes)"),
])
def test_an_unreadable_list_is_removed_with_a_note(tmp_path, content, what):
    (tmp_path / TRAIN_SNAPSHOT).write_bytes(content)
    (tmp_path / "checkpoint_epoch_0003").mkdir()
    note = drop_unusable_train_snapshot(str(tmp_path))
    assert note is not None and f"{TRAIN_SNAPSHOT} {what}" in note, note
    assert not (tmp_path / TRAIN_SNAPSHOT).exists()
    assert (tmp_path / "checkpoint_epoch_0003").is_dir()  # checkpoints are never touched


def test_a_list_naming_a_checkpoint_no_longer_on_storage_is_removed(tmp_path):
    """``rm -rf checkpoint_epoch_0007`` of a finished run: Ray Train's controller refused
    to start on every re-run (``CheckpointManagerInitializationError``, shown by
    ``raykube run`` as an ``ActorDiedError``; a new user's probe)."""
    (tmp_path / "checkpoint_epoch_0008").mkdir()
    (tmp_path / TRAIN_SNAPSHOT).write_text(_snapshot(
        ["checkpoint_epoch_0007", "checkpoint_epoch_0008"], "checkpoint_epoch_0008"))
    note = drop_unusable_train_snapshot(str(tmp_path))
    assert note is not None and (f"{TRAIN_SNAPSHOT} names checkpoint_epoch_0007, which is no "
                                 "longer on storage (deleted?): removed") in note, note
    assert not (tmp_path / TRAIN_SNAPSHOT).exists()
    assert (tmp_path / "checkpoint_epoch_0008").is_dir()
    # what Ray does not check at its start (a pending result) is no reason
    (tmp_path / TRAIN_SNAPSHOT).write_text(_snapshot(
        ["checkpoint_epoch_0008"], "checkpoint_epoch_0008", pending=["checkpoint_epoch_0009"]))
    assert drop_unusable_train_snapshot(str(tmp_path)) is None


def test_a_whole_list_or_none_is_left_alone(tmp_path):
    assert drop_unusable_train_snapshot(str(tmp_path)) is None
    (tmp_path / TRAIN_SNAPSHOT).write_text(json.dumps({"checkpoint_results": []}))
    assert drop_unusable_train_snapshot(str(tmp_path)) is None
    assert (tmp_path / TRAIN_SNAPSHOT).exists()


def _snapshot(names: list[str], latest: str | None, pending: list[str] = ()) -> str:
    entry = lambda n: {"checkpoint_dir_name": n, "metrics": {}}  # noqa: E731
    return json.dumps({"checkpoint_results": [entry(n) for n in names],
                       "latest_checkpoint_result": entry(latest) if latest else None,
                       "pending_training_results": [entry(n) for n in pending]})


def test_unlisted_checkpoints_are_the_readable_ones_rays_list_does_not_name(tmp_path):
    from raykube.resume import listed_checkpoints, unlisted_checkpoints

    for epoch in (1, 2, 3, 4, 5):
        d = tmp_path / f"checkpoint_epoch_{epoch:04d}"
        d.mkdir()
        if epoch != 2:  # epoch 2 was cut off: no meta.json, left alone
            (d / "meta.json").write_text(json.dumps(
                {"epoch": epoch, "spec": {}, "metrics": {"valAccuracy": epoch / 10}}))
    assert unlisted_checkpoints(str(tmp_path)) == []  # no list of Ray's: nothing is known
    (tmp_path / TRAIN_SNAPSHOT).write_text(_snapshot(["checkpoint_epoch_0004"],
                                                     "checkpoint_epoch_0005"))
    assert listed_checkpoints(str(tmp_path)) == {"checkpoint_epoch_0004", "checkpoint_epoch_0005"}
    got = unlisted_checkpoints(str(tmp_path))
    assert [p.rsplit("/", 1)[1] for p, _ in got] == ["checkpoint_epoch_0001", "checkpoint_epoch_0003"]
    assert got[1][1]["metrics"] == {"valAccuracy": 0.3}
    (tmp_path / TRAIN_SNAPSHOT).write_text(
        _snapshot([], None, pending=["checkpoint_epoch_0001", "checkpoint_epoch_0003"]))
    assert unlisted_checkpoints(str(tmp_path))[0][0].endswith("checkpoint_epoch_0004")
    (tmp_path / TRAIN_SNAPSHOT).write_text("{")
    assert listed_checkpoints(str(tmp_path)) is None and unlisted_checkpoints(str(tmp_path)) == []


@pytest.mark.parametrize(("listed", "unlisted", "keep", "mode", "deleted"), [
    # the old list's best (a) is better than anything Ray's new list holds: it stays
    ([("x", 0.5), ("y", 0.6)], [("a", 0.9), ("b", 0.4), ("c", 0.55)], 2, "max", ["b", "c"]),
    ([("x", 0.5), ("y", 0.6)], [("a", 0.9), ("b", 0.4), ("c", 0.55)], 3, "max", ["b"]),
    ([("x", 0.5), ("y", 0.6)], [("a", 0.9), ("b", 0.4), ("c", 0.7)], 1, "max", ["b", "c"]),
    # ranked by loss
    ([("x", 0.5)], [("a", 0.9), ("b", 0.1)], 1, "min", ["a"]),
    # Ray's win ties; a checkpoint without the score ranks last
    ([("x", 0.5)], [("a", 0.5), ("b", None)], 1, "max", ["a", "b"]),
    ([("x", None)], [("a", 0.2), ("b", None)], 2, "max", ["b"]),
    ([], [("a", 0.2)], 1, "max", []),
])
def test_unlisted_checkpoints_outside_the_keep_best_of_all_are_deleted(listed, unlisted, keep,
                                                                          mode, deleted):
    from raykube.resume import unlisted_to_delete

    assert unlisted_to_delete(listed, unlisted, keep=keep, mode=mode) == deleted


def test_a_changed_seed_is_refused_like_a_changed_dataset(tmp_path):
    """``train.seed`` splits train from validation (``raykube.data``): resumed with
    another, the run validated on examples its checkpoints were trained on, and ranked
    ``best/`` on another validation set. It was taken as a note."""
    from raykube.spec import TrainingRunSpec
    from raykube.train import RunDirConflict, check_resumable

    def spec(**train):
        return TrainingRunSpec.model_validate({"model": {"name": "mlp"},
                                               "data": {"dataset": "digits"},
                                               "train": {"epochs": 5, **train}})

    ckpt = tmp_path / "checkpoint_epoch_0002"
    ckpt.mkdir()
    (ckpt / "meta.json").write_text(json.dumps({"epoch": 2, "spec": spec(seed=0).to_dict()}))
    check_resumable(str(tmp_path), spec(seed=0, epochs=9, batchSize=32))  # a note at most
    with pytest.raises(RunDirConflict, match="trained with train.seed 0, not 7"):
        check_resumable(str(tmp_path), spec(seed=7))
