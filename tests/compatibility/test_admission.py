"""The one admission rule: the gallery's own encoder, a measured passing entry, or a lineage of measured passing links."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from bt2_hf.compatibility import IncompatibleModelsError, admit_query_model, seal_entry, verify_command

FP = {name: "sha256:" + letter * 64 for name, letter in (("v1", "a"), ("v2", "b"), ("v3", "c"), ("x", "d"))}
DATASET = {"name": "bands", "split": "test", "size": 120, "sha256": "0" * 64}


def measured(name, dim, passed=True):
    new_old = 62.0 if passed else 58.0
    return {
        "name_or_path": f"org/{name}", "fingerprint": FP[name], "embedding_dim": dim, "method": "bt2",
        "status": "measured", "dataset": DATASET,
        "metrics": {"old/old": {"top1": 60.0, "mAP": 30.0}, "new/old": {"top1": new_old, "mAP": 31.0}},
        "criterion": {"metrics": ["top1", "mAP"], "passed": passed},
    }  # fmt: skip


def inherited(name, dim, via, link_passed=True):
    return {"name_or_path": f"org/{name}", "fingerprint": FP[name], "embedding_dim": dim, "method": "bt2",
            "status": "inherited", "via": f"org/{via}", "via_fingerprint": FP[via], "link_passed": link_passed}  # fmt: skip


def config(name, dim, entries=(), training=None):
    """A query model's config; its measured entries are bound to it and sealed, as `bt2 verify` writes them."""
    entries = [seal_entry({**e, "query_fingerprint": FP[name]}) if e.get("status") == "measured" else e
               for e in entries]  # fmt: skip
    return SimpleNamespace(name_or_path=f"org/{name}", fingerprint=FP[name], embedding_dim=dim,
                           compatible_with=entries, training=training or {})  # fmt: skip


def test_same_model_and_measured_passing_entry():
    assert admit_query_model(config("v1", 16), FP["v1"], 16, "org/v1").basis == "same_model"
    admission = admit_query_model(config("v2", 24, [measured("v1", 16)]), FP["v1"], 16, "org/v1")
    assert (admission.basis, admission.prefix_dim, admission.overridden) == ("measured", 16, False)


def test_lineage_needs_every_link_measured_and_passing():
    v3 = config("v3", 32, [measured("v2", 24), inherited("v1", 16, via="v2")])
    assert admit_query_model(v3, FP["v1"], 16, "org/v1").basis == "lineage"
    unmeasured_link = config("v3", 32, [measured("v2", 24), inherited("v1", 16, via="v2", link_passed=False)])
    failing_direct = config("v3", 32, [measured("v2", 24, passed=False), inherited("v1", 16, via="v2")])
    for query in (unmeasured_link, failing_direct):
        with pytest.raises(IncompatibleModelsError, match="only through 'org/v2'"):
            admit_query_model(query, FP["v1"], 16, "org/v1")
        assert admit_query_model(query, FP["v1"], 16, "org/v1", allow_unmeasured=True).overridden


def test_failing_measurement_is_refused_even_with_the_override():
    query = config("v2", 24, [measured("v1", 16, passed=False)])
    for allow in (False, True):
        with pytest.raises(IncompatibleModelsError) as error:
            admit_query_model(query, FP["v1"], 16, "org/v1", allow_unmeasured=allow)
        message = str(error.value)
        assert "FAILED" in message and "top1 new→old 58.00 vs old→old 60.00" in message
        assert "org/v2" in message and "org/v1" in message and "bands:test (120 items)" in message


def test_declared_or_trained_against_only_needs_the_override():
    declared = {k: v for k, v in measured("v1", 16).items() if k not in ("status", "dataset", "metrics", "criterion")}
    trained = {"trained_against": {"name_or_path": "org/v1", "fingerprint": FP["v1"], "prefix_dim": 16}}
    for query in (config("v2", 24, [declared]), config("v2", 24, training=trained)):
        with pytest.raises(IncompatibleModelsError) as error:
            admit_query_model(query, FP["v1"], 16, "org/v1")
        assert verify_command("org/v2", "org/v1") in str(error.value)
        admission = admit_query_model(query, FP["v1"], 16, "org/v1", allow_unmeasured=True)
        assert (admission.basis, admission.prefix_dim, admission.overridden) == ("unmeasured_override", 16, True)


def test_unrelated_model_is_refused_even_with_the_override_and_widths_are_checked():
    for allow in (False, True):
        with pytest.raises(IncompatibleModelsError, match="unrelated"):
            admit_query_model(config("x", 16), FP["v1"], 16, "org/v1", allow_unmeasured=allow)
    with pytest.raises(IncompatibleModelsError, match="holds 8-d vectors"):
        admit_query_model(config("v2", 24, [measured("v1", 16)]), FP["v1"], 8, "org/v1")
    with pytest.raises(IncompatibleModelsError, match="no fingerprint"):
        admit_query_model(config("v2", 24), None, 16)
    assert verify_command("org/new", "org/old", "org/indep") == (
        "bt2 verify org/new --old org/old --data HELD_OUT_DATA --split test --independent org/indep"
    )


def test_admission_to_dict_is_asdict_with_its_own_entry():
    """The hand-written ``to_dict`` against ``dataclasses.asdict`` (every field, the entry copied)."""
    import dataclasses

    from bt2_hf.compatibility import Admission

    entry = {"fingerprint": "sha256:" + "1" * 64, "metrics": {"top1": [70.0, 60.0]}}
    admission = Admission(16, "measured", "q", "g", overridden=True, entry=entry, gallery_prefix_dim=8, evidence="e")
    described = admission.to_dict()
    assert described == dataclasses.asdict(admission)
    described["entry"]["metrics"]["top1"].append(1.0)
    assert entry["metrics"]["top1"] == [70.0, 60.0]
