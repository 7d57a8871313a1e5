"""A store call that hangs is announced while it waits (``raykube.train._store_call``).

The slow call here is a function that sleeps: it stands in for an object store that
takes the connection and never answers (a stopped MinIO), which a real server shows only
after ``raykube.s3.REQUEST_TIMEOUT_S`` x 3 tries, minutes no unit test should spend."""

from __future__ import annotations

import time

from raykube.train import _store_call


class Notes:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def note(self, text: str) -> None:
        self.lines.append(text)


def config(notes: Notes) -> dict:
    return {"storage_fs": object(), "store_where": "http://127.0.0.1:9", "notes": notes,
            "store_slow_note_s": 0.2, "run_path": "bkt/run", "run_dir": "s3://bkt/run"}


def test_a_call_that_hangs_is_said_once_and_its_answer_too():
    notes = Notes()
    assert _store_call(lambda: time.sleep(0.6) or "done", config(notes),
                       "saving checkpoint_epoch_0016") == "done"
    assert notes.lines == [
        "the object store http://127.0.0.1:9 has not answered for 0.2 s while saving "
        "checkpoint_epoch_0016; still waiting (each request waits up to 60 s, and is tried "
        "3 times)",
        "the object store http://127.0.0.1:9 answered: training goes on"], notes.lines


def test_a_prompt_call_says_nothing():
    notes = Notes()
    assert _store_call(lambda: 7, config(notes), "loading") == 7
    time.sleep(0.4)  # past the note's time: the timer was cancelled
    assert notes.lines == []
