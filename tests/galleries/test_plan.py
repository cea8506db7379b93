"""``bt2 plan``: the arithmetic against hand-computed values, memory against real faiss galleries, the CLI, bad input."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest

from bt2_hf.cli import plan as plan_cli
from bt2_hf.galleries import FaissGallery
from bt2_hf.galleries.plan import (
    PlanInputError,
    SearchCalibration,
    backfill_schedule,
    calibrate_embedding,
    calibrate_search,
    calibrate_searches,
    index_memory,
    ladder_sizes,
    make_plan,
    predict_latency,
    reembedding_cost,
    seconds_per_float,
)

ENCODER = {"fingerprint": "sha256:" + "0" * 64, "name_or_path": "test/old", "embedding_dim": 32}


def test_reembedding_cost_by_hand():
    # 1,000,000 items at 250/s measured, on a GPU twice as fast: 500/s → 2,000 s = 0.5556 h, at 3.0 an hour = 1.6667.
    cost = reembedding_cost(1_000_000, 250.0, 3.0, speedup=2.0)
    assert cost["items_per_second"] == 500.0
    assert cost["seconds"] == pytest.approx(2000.0)
    assert cost["gpu_hours"] == pytest.approx(2000.0 / 3600.0)
    assert cost["cost"] == pytest.approx(2000.0 / 3600.0 * 3.0)
    assert reembedding_cost(10, 1.0, 0.0)["cost"] == 0.0  # a machine already paid for


def test_backfill_schedule_by_hand():
    # 5 items/s = 432,000 a day: 864,000 items take 2 days, β = 0.5 after day 1.
    schedule = backfill_schedule(864_000, rate=5.0)
    assert schedule["items_per_day"] == pytest.approx(432_000.0)
    assert schedule["days_to_full"] == pytest.approx(2.0)
    assert schedule["at_fraction"][0.5] == pytest.approx(1.0)
    assert schedule["by_day"] == {1: pytest.approx(0.5), 2: pytest.approx(1.0)}
    # A budget: 12 a day at 3 an hour = 4 GPU hours = 14,400 s at 100 items/s = 1,440,000 items a day.
    budget = backfill_schedule(2_880_000, budget_per_day=12.0, gpu_price_per_hour=3.0, items_per_second=100.0)
    assert budget["gpu_hours_per_day"] == pytest.approx(4.0)
    assert budget["items_per_day"] == pytest.approx(1_440_000.0)
    assert budget["days_to_full"] == pytest.approx(2.0)
    # One GPU cannot run more than 24 hours a day, whatever the budget.
    capped = backfill_schedule(100, budget_per_day=1000.0, gpu_price_per_hour=1.0, items_per_second=1.0)
    assert capped["gpu_hours_per_day"] == 24.0 and capped["items_per_day"] == pytest.approx(86_400.0)


def test_index_memory_by_hand_matches_the_recorded_1m_benchmark():
    # 1M × 128 IVF-PQ at the galleries' defaults: 16-byte codes, 8-byte list ids, 1,000 × 128 float32 centroids,
    # 256 × 128 float32 codebooks = 24,643,072 bytes (benchmarks/README.md measured 23.5 MiB); flat: 512,000,000.
    ivfpq = index_memory(1_000_000, 128, "ivfpq")
    assert (ivfpq["pq_m"], ivfpq["nlist"]) == (16, 1000)
    assert ivfpq["parts"]["index.faiss"]["bytes"] == 16_000_000 + 8_000_000 + 512_000 + 131_072
    assert ivfpq["parts"]["index.faiss"]["bytes"] / 2**20 == pytest.approx(23.5, abs=0.05)
    assert ivfpq["ram"] == 24_643_072 + 8_000_000  # + the int64 ids loaded with the gallery
    flat = index_memory(1_000_000, 128, "flat")
    assert flat["parts"]["index (float32 vectors)"]["bytes"] == 512_000_000
    half = index_memory(1000, 16, "flat", dtype_bytes=2)
    assert half["parts"]["vectors.npy (memory-mapped re-ranking vectors)"]["bytes"] == 1000 * 16 * 2 + 128
    during = index_memory(1000, 16, "flat", new_dimension=20, backfilled=0.25)
    assert during["parts"]["re-embedded rows' flat index"]["bytes"] == 250 * (20 * 4 + 8)
    assert during["parts"]["backfill/vectors.npy (new rows, memory-mapped)"]["bytes"] == 1000 * 20 * 4 + 128
    assert "re-embedded rows' IVF index" not in during["parts"]  # exact below the limit: the table only
    # Past the exact limit (100k), an IVF index holds the rows again with their ids, and 2·√(1M) = 2,000 centroids.
    late = index_memory(1_000_000, 16, "flat", new_dimension=20, backfilled=0.5)
    assert late["parts"]["re-embedded rows' IVF index"]["bytes"] == 500_000 * (20 * 4 + 8) + 2000 * 20 * 4


@pytest.mark.parametrize("index_type", ["flat", "ivfpq"])
def test_index_memory_matches_a_real_gallery_on_disk(tmp_path, index_type):
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(4000, 32)).astype(np.float32)
    gallery = FaissGallery.build(tmp_path / "g", vectors, encoder=ENCODER, index_type=index_type)
    predicted = index_memory(4000, 32, index_type)
    sizes = gallery.manifest["file_sizes"]
    assert sizes["ids.npy"] == predicted["parts"]["ids.npy"]["bytes"]
    assert sizes["vectors.npy"] == predicted["parts"]["vectors.npy (memory-mapped re-ranking vectors)"]["bytes"]
    # index.faiss adds a header and per-list sizes to what the model counts: within 2 %.
    assert sizes["index.faiss"] == pytest.approx(predicted["parts"]["index.faiss"]["bytes"], rel=0.02)


def test_latency_model_by_hand():
    calibration = SearchCalibration(count=10_000, dimension=64, queries=100, threads=1, flat_s=1e-3,
                                    quantizer_s=1e-5, probe_s=2e-6, code_s=1e-8, rerank_s=5e-4, nlist=100,
                                    nprobe=16, pq_m=8, rerank=1000)  # fmt: skip
    # flat: ∝ N·d: 4× the items and 2× the width = 8× the time.
    assert predict_latency(calibration, 40_000, 128, "flat")["seconds_per_query"] == pytest.approx(8e-3)
    # IVF-PQ at 40,000 × 128 (nlist 200, pq_m 16): quantizer 1e-5 · (200·128)/(100·64) = 4e-5;
    # tables 2e-6 · 16 probes · 2 = 6.4e-5; codes 1e-8 · (16/200 · 40,000) · 2 = 6.4e-5; re-ranking 5e-4 · 2 = 1e-3.
    ivf = predict_latency(calibration, 40_000, 128, "ivfpq")
    assert (ivf["nlist"], ivf["pq_m"]) == (200, 16)
    assert ivf["terms"] == pytest.approx({"quantizer": 4e-5, "tables": 6.4e-5, "codes": 6.4e-5, "rerank": 1e-3,
                                          "overhead": 0.0})  # fmt: skip
    assert ivf["seconds_per_query"] == pytest.approx(4e-5 + 6.4e-5 + 6.4e-5 + 1e-3)
    # a measured per-call overhead is added as it is, whatever the size
    with_overhead = predict_latency(replace(calibration, overhead_s=2e-4), 40_000, 128, "ivfpq")
    assert with_overhead["seconds_per_query"] == pytest.approx(ivf["seconds_per_query"] + 2e-4)


def test_ladder_sizes_double_up_to_the_top():
    # 1,000 × 32 floats = 128 kB; doubling while within 1 MiB: 1k, 2k, 4k, 8k (1 MiB exactly).
    assert ladder_sizes(1000, 32, 1 << 20) == [1000, 2000, 4000, 8000]
    # A top well above the last doubling is measured too: 1.5 MiB = 12,288 vectors, over 1.25 × 8,000.
    assert ladder_sizes(1000, 32, 3 << 19) == [1000, 2000, 4000, 8000, 12288]
    assert ladder_sizes(1000, 32, 1000) == [1000]


def test_seconds_per_float_interpolates_in_log_size():
    ladder = [[1e6, 1e-10], [4e6, 3e-10]]
    assert seconds_per_float(ladder, 5e5) == 1e-10  # below the ladder: its first rung
    assert seconds_per_float(ladder, 2e6) == pytest.approx(2e-10)  # half-way in log size
    assert seconds_per_float(ladder, 1e9) == 3e-10  # above: its top (bound by memory bandwidth)


def test_latency_model_scales_by_the_ladders():
    calibration = SearchCalibration(count=10_000, dimension=64, queries=100, threads=1, flat_s=1e-3,
                                    quantizer_s=1e-5, probe_s=2e-6, code_s=1e-8, rerank_s=5e-4, nlist=100,
                                    nprobe=16, pq_m=8, rerank=1000, flat_scan=[[640_000, 1e-9], [2_560_000, 3e-9]],
                                    rerank_scan=[[640_000, 2e-9], [2_560_000, 5e-9]])  # fmt: skip
    # flat at 20,000 × 64 = 1,280,000 floats: half-way in log size, 2e-9 s a float → 2.56 ms; far above: 3e-9.
    assert predict_latency(calibration, 20_000, 64, "flat")["seconds_per_query"] == pytest.approx(2.56e-3)
    assert predict_latency(calibration, 1_000_000, 64, "flat")["seconds_per_query"] == pytest.approx(0.192)
    # Re-ranking at 1M × 64 reads from a table past the ladder: 5e-9 / 2e-9 = 2.5× the calibration's 5e-4.
    terms = predict_latency(calibration, 1_000_000, 64, "ivfpq")["terms"]
    assert terms["rerank"] == pytest.approx(1.25e-3)


def test_calibrate_search_measures_every_term():
    calibration = calibrate_search(32, count=4000, queries=50, repeats=1, ladder_bytes=4000 * 32 * 4 * 4)
    assert (calibration.count, calibration.dimension, calibration.pq_m) == (4000, 32, 4)
    assert calibration.flat_s > 0 and calibration.rerank_s > 0 and calibration.quantizer_s > 0
    assert calibration.code_s >= 0 and calibration.probe_s >= 0
    # The ladders: the calibration size, doubled twice (4× its bytes), each rung timed.
    assert [size for size, _ in calibration.flat_scan] == [4000 * 32, 8000 * 32, 16000 * 32]
    assert [size for size, _ in calibration.rerank_scan] == [4000 * 32, 8000 * 32, 16000 * 32]
    assert all(cost > 0 for _, cost in calibration.flat_scan + calibration.rerank_scan)
    assert calibration.flat_s == pytest.approx(calibration.flat_scan[0][1] * 4000 * 32)
    assert calibration.mode == "batched"


def test_calibrate_searches_times_both_ways_a_query_is_searched():
    calibrations = calibrate_searches(32, count=4000, queries=40, repeats=1, ladder_bytes=4000 * 32 * 4 * 2)
    assert sorted(calibrations) == ["batched", "one_at_a_time"]
    for mode, calibration in calibrations.items():
        assert calibration.mode == mode and calibration.queries == 40
        assert [size for size, _ in calibration.rerank_scan] == [4000 * 32, 8000 * 32]
        assert calibration.rerank_s > 0 and calibration.quantizer_s > 0
    # one gallery, one set of rungs: the two differ in their timings only
    assert calibrations["batched"].nlist == calibrations["one_at_a_time"].nlist
    with pytest.raises(PlanInputError, match="mode"):
        calibrate_searches(32, count=4000, queries=10, repeats=1, modes=("streaming",))


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: reembedding_cost(-5, 100.0, 1.0), "gallery size"),
        (lambda: reembedding_cost(0, 100.0, 1.0), "gallery size"),
        (lambda: reembedding_cost(10, 0.0, 1.0), "throughput"),
        (lambda: reembedding_cost(10, float("nan"), 1.0), "throughput"),
        (lambda: reembedding_cost(10, 1.0, -1.0), "price"),
        (lambda: reembedding_cost(10, 1.0, 1.0, speedup=0), "speed-up"),
        (lambda: backfill_schedule(10), "either"),
        (lambda: backfill_schedule(10, rate=1.0, budget_per_day=1.0), "either"),
        (lambda: backfill_schedule(10, budget_per_day=5.0, items_per_second=1.0), "price"),
        (lambda: calibrate_search(8, count=4000, ladder_bytes=0), "calibration_max_mib"),
        (lambda: index_memory(10, 32, "hnsw"), "index type"),
        (lambda: index_memory(1000, 30, "ivfpq", pq_m=8), "divide"),
        (
            lambda: make_plan(
                10, item_type="video", old_dim=8, new_dim=12, new_items_per_second=1.0, gpu_price_per_hour=1.0
            ),
            "item type",
        ),  # fmt: skip
        (
            lambda: make_plan(
                10, item_type="image", old_dim=16, new_dim=12, new_items_per_second=1.0, gpu_price_per_hour=1.0
            ),
            "below",
        ),  # fmt: skip
    ],
)
def test_bad_inputs_are_refused_with_a_clear_error(call, message):
    with pytest.raises(PlanInputError, match=message):
        call()


def test_cli_json_output(capsys, tmp_path):
    argv = ["--count", "1000000", "--item_type", "image", "--old_dim", "128", "--new_dim", "160",
            "--new_throughput", "2000", "--gpu_price", "2.5", "--gpu_speedup", "2", "--backfill_rate", "500",
            "--no_latency", "--json", "--output", str(tmp_path / "plan.json")]  # fmt: skip
    assert plan_cli.main(argv) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == json.loads((tmp_path / "plan.json").read_text())
    # 1M items at 4,000 items/s = 250 s = 0.0694 GPU-hours × 2.5 = 0.1736.
    assert printed["reembedding_avoided"]["gpu_hours"] == pytest.approx(250 / 3600)
    assert printed["reembedding_avoided"]["cost"] == pytest.approx(250 / 3600 * 2.5)
    assert printed["backfill"]["days_to_full"] == pytest.approx(1_000_000 / (500 * 86_400))
    assert printed["memory"]["old_gallery"]["flat"]["parts"]["index (float32 vectors)"]["bytes"] == 512_000_000
    assert "latency" not in printed


def test_cli_table_with_latency_and_a_calibrated_model(saved_models, capsys):
    argv = ["--count", "50000", "--item_type", "image", "--calibrate", str(saved_models["new"]),
            "--calibrate_items", "32", "--batch_size", "16", "--gpu_price", "1", "--budget_per_day", "2",
            "--calibration_size", "4000", "--calibration_queries", "20", "--calibration_max_mib", "1"]  # fmt: skip
    assert plan_cli.main(argv) == 0
    out = capsys.readouterr().out
    assert "8-d (old) → 12-d (new)" in out  # the widths read from the model's config
    assert "Re-embedding avoided" in out and "Backfill at" in out and "Query latency" in out
    assert "ivfpq" in out and "flat" in out
    assert "timed up to 1.0 MiB" in out  # 4,000 × 8 floats doubled five times: 1 MiB
    assert "one at a time" in out and "in batches of 20" in out


def test_calibrate_embedding_counts_items_per_second(saved_models):
    from bt2_hf import BT2Model

    record = calibrate_embedding(BT2Model.from_pretrained(saved_models["old"]), items=16, batch_size=8)
    assert record["items"] == 16 and record["modality"] == "image"
    assert record["items_per_second"] == pytest.approx(16 / record["seconds"])


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--count", "-5", "--new_throughput", "10"], "gallery size must be a whole number"),
        (["--count", "100", "--new_throughput", "0"], "throughput (items/s) must be a finite number > 0"),
        (["--count", "100"], "Give the new model's throughput"),
        (["--count", "100", "--new_throughput", "/nonexistent/emb"], "nonexistent"),
    ],
)
def test_cli_bad_inputs_exit_2_with_the_reason(capsys, extra, message):
    argv = ["--item_type", "image", "--old_dim", "8", "--new_dim", "12", "--gpu_price", "1", *extra]
    assert plan_cli.main(argv) == 2
    assert message in capsys.readouterr().err


def test_cli_json_latency_one_at_a_time_and_batched(capsys):
    argv = ["--count", "200000", "--item_type", "text", "--old_dim", "8", "--new_dim", "12", "--new_throughput", "50",
            "--gpu_price", "1", "--calibration_size", "4000", "--calibration_queries", "20",
            "--calibration_max_mib", "1", "--json"]  # fmt: skip
    assert plan_cli.main(argv) == 0
    latency = json.loads(capsys.readouterr().out)["latency"]
    for section in (latency, latency["one_at_a_time"]):
        calibration = SearchCalibration(**section["calibration"])
        for stage, width in (("old_gallery", 8), ("new_gallery", 12)):
            for kind in ("flat", "ivfpq"):
                expected = predict_latency(calibration, 200_000, width, kind)["seconds_per_query"]
                assert section[stage][kind]["seconds_per_query"] == pytest.approx(expected)
    assert (latency["calibration"]["mode"], latency["one_at_a_time"]["calibration"]["mode"]) == (
        "batched", "one_at_a_time")  # fmt: skip
