"""A low-priority backfill yields to the searches: it holds its steps while a search is in flight (up to its bound),
still finishes under continuous load, embeds in slices, runs at nice 19, and re-embeds exactly what a normal-priority
backfill does. Behaviour only: no test here depends on how fast the machine is."""

from __future__ import annotations

import dataclasses
import shutil
import threading
import time

import numpy as np
import pytest
from fastapi.testclient import TestClient

from bt2_hf.serving import create_app
from bt2_hf.serving.priority import BackfillPriority, SearchTraffic
from bt2_hf.serving.service import BackfillJob

from .conftest import TOKEN, WRITE


def wait_for(condition, seconds: float = 60.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


# -- the traffic signal ----------------------------------------------------------------------------------------------


def test_traffic_is_busy_during_a_search_and_shortly_after():
    traffic = SearchTraffic(quiet_after=0.2)
    assert not traffic.busy() and traffic.in_flight == 0
    with traffic.search():
        with traffic.search():
            assert traffic.in_flight == 2 and traffic.busy()
        assert traffic.in_flight == 1
    assert traffic.in_flight == 0 and traffic.busy()  # a search just ended: more may be on their way
    wait_for(lambda: not traffic.busy(), 5)
    for wrong in ({"quiet_after": -1}, {"poll": 0}):
        with pytest.raises(ValueError, match="quiet_after"):
            SearchTraffic(**wrong)


def test_a_wait_for_quiet_ends_when_the_search_ends_or_at_its_bound():
    traffic = SearchTraffic(quiet_after=0.0)
    assert traffic.wait_quiet(30) < 1  # quiet already: no wait
    held, release = threading.Event(), threading.Event()

    def search():
        with traffic.search():
            held.set()
            release.wait(30)

    thread = threading.Thread(target=search)
    thread.start()
    held.wait(10)
    # held for its whole bound while the search is in flight
    assert traffic.wait_quiet(0.3) >= 0.3
    timer = threading.Timer(0.2, release.set)
    timer.start()
    waited = traffic.wait_quiet(30)  # woken by the end of the search, long before its bound
    thread.join(10)
    assert 0.15 <= waited < 20
    # a stop request ends a wait too
    stop = threading.Event()
    with traffic.search():
        threading.Timer(0.1, stop.set).start()
        assert traffic.wait_quiet(30, stop) < 20


def test_priorities_by_name():
    low, normal = BackfillPriority.named("low"), BackfillPriority.named("normal")
    assert 0 < low.share < 1 and low.slice_size
    assert normal.share is None and normal.slice_size is None and normal.wait_after(10.0) == 0
    # a step of t seconds earns the next one a wait of t (1 - share) / share: the job's share of the time
    assert BackfillPriority.named("low", share=0.25).wait_after(1.0) == pytest.approx(3.0)
    assert BackfillPriority.named("low", share=0.5).wait_after(0.0) == 0
    with pytest.raises(ValueError, match="low.*normal"):
        BackfillPriority.named("idle")
    for share in (0, -0.5, 1.5):
        with pytest.raises(ValueError, match="share"):
            BackfillPriority.named("low", share=share)


class SlowJob(BackfillJob):
    """A backfill job whose slices take at least ``SECONDS`` each (the real embedding, then a sleep): its steps have
    a known least duration, so the waits they earn do too, whatever the machine's speed."""

    SECONDS = 0.1
    slices: list[int] = []
    yielded: list[float] = []

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.priority.slice_size:
            self.priority = dataclasses.replace(self.priority, slice_size=100)

    def _embedder(self):
        embed_rows = super()._embedder()

        def slow(rows):
            SlowJob.slices.append(len(rows))
            SlowJob.yielded.append(self.yielded_seconds)  # the job's waits before this slice
            vectors = embed_rows(rows)
            time.sleep(SlowJob.SECONDS)
            return vectors

        return slow


def start_slow_job(service, serving_data, seconds: float, **spec):
    _, gallery = service.served("products")
    loaded = service.registry.get("new")
    SlowJob.SECONDS, SlowJob.slices, SlowJob.yielded = seconds, [], []
    service.start_job(gallery, loaded, {"model": loaded.path, "data": str(serving_data), **spec}, SlowJob)
    return gallery


def test_a_low_priority_backfill_does_not_commit_while_a_search_holds_it_off(service, serving_data):
    """A slice of 0.5 s at a share of 1 %: the next step may wait 49.5 s for quiet traffic. While a search is in
    flight nothing is committed (well within that bound); once it ends, the job goes on at once and finishes."""
    with service.traffic.search():  # a search in flight for as long as this block runs
        gallery = start_slow_job(service, serving_data, 0.5, batch_size=200, priority="low", share=0.01)
        wait_for(lambda: len(SlowJob.slices) >= 1, 60)  # the first slice ran (its step had no wait owed yet)
        time.sleep(3.0)
        assert gallery.job.status == "running" and SlowJob.slices == [100]  # held before its second slice
        assert not (gallery.store.backfill_state or {}).get("done")  # and nothing committed
    gallery.job.join(40)  # far less than the 49.5 s owed: the end of the search let it go on
    assert gallery.job.status == "complete" and gallery.store.backfill_state["done"] == 200
    assert SlowJob.slices == [100, 100]


def test_a_low_priority_backfill_finishes_under_continuous_load_within_its_share(service, serving_data):
    """A search always in flight: every step waits all it earned, and the job still re-embeds every item. Each of
    the 4 slices (≥ 0.1 s) earns the step after it ≥ 0.1 s at a share of 1/2, so the job waited ≥ 0.4 s."""
    with service.traffic.search():
        gallery = start_slow_job(service, serving_data, 0.1, batch_size=100, priority="low", share=0.5)
        gallery.job.join(120)
    progress = service.progress(gallery)
    assert progress["status"] == "complete" and progress["done"] == progress["count"] == 200
    assert progress["priority"] == "low" and progress["items_per_second"] > 0
    assert SlowJob.slices == [100, 100]
    assert progress["yielded_seconds"] >= 2 * 0.1 * 0.98  # each slice's next step waited at least as long


def test_a_backfill_paced_within_its_share_by_its_pauses_does_not_wait(service, serving_data):
    """Under continuous load, the first batch's steps owe waits (they had no idle time before them); the 1 s pause
    after it banks a credit that covers the second batch's steps at a share of 0.9, so that batch never waits."""
    with service.traffic.search():
        gallery = start_slow_job(service, serving_data, 0.05, batch_size=100, priority="low", share=0.9, pause=1.0)
        gallery.job.join(120)
    progress = service.progress(gallery)
    assert progress["status"] == "complete" and progress["done"] == 200
    first, second = SlowJob.yielded  # the waits before each batch's slice
    assert first == 0 and second > 0  # the first batch's steps after its slice waited
    assert progress["yielded_seconds"] == pytest.approx(second, abs=1e-3)  # and nothing after the pause


def test_a_normal_priority_backfill_never_waits(service, serving_data):
    with service.traffic.search():
        gallery = start_slow_job(service, serving_data, 0.0, batch_size=64, priority="normal")
        gallery.job.join(120)
    progress = service.progress(gallery)
    assert progress["status"] == "complete" and progress["done"] == 200
    assert progress["priority"] == "normal" and progress["yielded_seconds"] == 0
    assert SlowJob.slices == [64, 64, 64, 8]  # whole batches


class RecordingJob(BackfillJob):
    """A backfill job that embeds (and writes) in slices of 24 rows at low priority, and records each slice's size."""

    slices: list[int] = []
    written: list[int] = []

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.priority = (
            dataclasses.replace(self.priority, slice_size=24) if self.priority.slice_size else self.priority
        )

    def _embedder(self):
        embed_rows = super()._embedder()

        def recorded(rows):
            RecordingJob.slices.append(len(rows))
            return embed_rows(rows)

        return recorded


def backfilled_vectors(service, serving_models, serving_data, priority: str):
    _, gallery = service.served("products")
    loaded = service.registry.get("new")
    RecordingJob.slices, RecordingJob.written = [], []
    write_rows = gallery.store.write_backfill_rows

    def recorded(rows, vectors):  # the rows' writes, as the job makes them
        RecordingJob.written.append(len(rows))
        return write_rows(rows, vectors)

    gallery.store.write_backfill_rows = recorded
    spec = {"model": loaded.path, "data": str(serving_data), "batch_size": 64, "priority": priority, "share": 0.9}
    service.start_job(gallery, loaded, spec, RecordingJob)
    gallery.job.join(120)
    assert gallery.job.status == "complete"
    store = gallery.store
    return store.ids_of(store.backfill_order()), np.asarray(store.backfill_vectors(store.backfill_order()))


def test_low_priority_embeds_in_slices_and_writes_the_same_vectors(
    service, serving_models, serving_data, built_gallery, tmp_path
):
    from bt2_hf.galleries.aliases import GalleryRoot
    from bt2_hf.serving import GalleryService

    ids_low, low = backfilled_vectors(service, serving_models, serving_data, "low")
    # batches of 64 (the last one 8) embedded, and their rows written, 24 rows at a time
    assert RecordingJob.slices == RecordingJob.written == [24, 24, 16] * 3 + [8]
    # a fresh copy of the gallery backfilled at normal priority: whole batches, the same rows and vectors
    other = tmp_path / "other"
    other.mkdir()
    shutil.copytree(built_gallery, other / "products_v1")
    GalleryRoot(other).create_alias("products", "products_v1")
    normal_service = GalleryService(other, models=[f"new={serving_models['new']}"], resume_jobs=False)
    try:
        ids_normal, normal = backfilled_vectors(normal_service, serving_models, serving_data, "normal")
    finally:
        normal_service.stop_jobs()
    assert RecordingJob.slices == RecordingJob.written == [64, 64, 64, 8]
    assert list(ids_low) == list(ids_normal)
    np.testing.assert_allclose(low, normal, atol=1e-5)


def test_the_api_takes_the_priority_and_reports_the_rate(service, serving_data):
    client = TestClient(create_app(service, token=TOKEN))
    refused = client.post("/backfill", headers=WRITE, json={"gallery": "products", "model": "new",
                                                            "data": str(serving_data), "priority": "idle"})  # fmt: skip
    assert refused.status_code == 422
    started = client.post("/backfill", headers=WRITE, json={"gallery": "products", "model": "new",
                                                            "data": str(serving_data), "batch_size": 64,
                                                            "priority": "low", "share": 0.9})  # fmt: skip
    assert started.status_code == 200, started.text
    _, gallery = service.served("products")
    gallery.job.join(120)
    progress = client.get("/galleries").json()["galleries"][0]["backfill"]
    assert progress["priority"] == "low" and progress["done"] == 200 and progress["items_per_second"] > 0
    metrics = client.get("/metrics").text
    line = next(line for line in metrics.splitlines() if line.startswith("bt2_backfill_items_per_second{"))
    assert float(line.split()[-1]) == pytest.approx(progress["items_per_second"], rel=1e-3)
    assert 'bt2_backfill_yielded_seconds{gallery="products_v1"}' in metrics


def test_bt2_serve_takes_the_priority_low_by_default():
    from bt2_hf.cli.serve import build_parser

    parser = build_parser()
    assert parser.parse_args(["galleries"]).backfill_priority == "low"
    args = parser.parse_args(["galleries", "--backfill_priority", "low", "--backfill_share", "0.5"])
    assert (args.backfill_priority, args.backfill_share) == ("low", 0.5)
    with pytest.raises(SystemExit):
        parser.parse_args(["galleries", "--backfill_priority", "idle"])
