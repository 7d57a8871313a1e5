"""How many predictor actors ``raykube predict`` starts on a given cluster, and with what
share of it (``raykube.predict.actor_plan``): pure arithmetic, no Ray."""

from __future__ import annotations

import pytest

from raykube.predict import PredictError, actor_plan


@pytest.mark.parametrize("asked,resources,cpus_each,gpus_each,want", [
    # CPU only, defaults: one actor per CPU at most; one CPU left to the read tasks
    (1, {"CPU": 2.0}, None, None, (1, 1.0, 0.0)),
    (2, {"CPU": 2.0}, None, None, (2, 0.5, 0.0)),
    (100, {"CPU": 2.0}, None, None, (2, 0.5, 0.0)),
    (100, {"CPU": 1.0}, None, None, (1, 0.0, 0.0)),
    # an explicit CPU share caps the pool at what fits
    (8, {"CPU": 4.0}, 2.0, None, (2, 2.0, 0.0)),
    (10, {"CPU": 3.0}, 0.3, None, (10, 0.3, 0.0)),
    # GPUs: one actor per GPU share, whatever the CPUs
    (4, {"CPU": 16.0, "GPU": 1.0}, None, None, (1, 1.0, 1.0)),
    (4, {"CPU": 16.0, "GPU": 2.0}, None, 0.5, (4, 1.0, 0.5)),
    (9, {"CPU": 16.0, "GPU": 2.0}, None, 0.5, (4, 1.0, 0.5)),
])
def test_the_pool_is_what_the_cluster_can_hold(asked, resources, cpus_each, gpus_each, want):
    actors, cpus, gpus, note = actor_plan(asked, resources, cpus_per_actor=cpus_each,
                                          gpus_per_actor=gpus_each)
    assert (actors, cpus, gpus) == want
    if actors < asked:
        assert note and note.startswith(f"--concurrency {asked}: this Ray has "), note
        assert f"so {actors} predictor actor" in note, note
    else:
        assert note is None


@pytest.mark.parametrize("resources,cpus_each,gpus_each,want", [
    ({"CPU": 2.0}, 4.0, None, "--cpus-per-actor 4: this Ray has 2 CPUs"),
    ({"CPU": 2.0}, None, 1.0, "--gpus-per-actor 1: this Ray has 0 GPUs"),
    ({"CPU": 8.0, "GPU": 1.0}, None, 2.0, "--gpus-per-actor 2: this Ray has 1 GPU"),
])
def test_a_share_larger_than_the_cluster_is_refused(resources, cpus_each, gpus_each, want):
    with pytest.raises(PredictError) as err:
        actor_plan(2, resources, cpus_per_actor=cpus_each, gpus_per_actor=gpus_each)
    assert str(err.value) == want
