"""raykube.resume: Ray Train's checkpoint list, when a killed run left it unreadable."""

from __future__ import annotations

import json

import pytest

from raykube.resume import TRAIN_SNAPSHOT, drop_unreadable_train_snapshot


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
    note = drop_unreadable_train_snapshot(str(tmp_path))
    assert note is not None and f"{TRAIN_SNAPSHOT} {what}" in note, note
    assert not (tmp_path / TRAIN_SNAPSHOT).exists()
    assert (tmp_path / "checkpoint_epoch_0003").is_dir()  # checkpoints are never touched


def test_a_whole_list_or_none_is_left_alone(tmp_path):
    assert drop_unreadable_train_snapshot(str(tmp_path)) is None
    (tmp_path / TRAIN_SNAPSHOT).write_text(json.dumps({"checkpoint_results": []}))
    assert drop_unreadable_train_snapshot(str(tmp_path)) is None
    assert (tmp_path / TRAIN_SNAPSHOT).exists()
