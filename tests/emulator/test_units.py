"""Pure pieces without HTTP: rendering, fault parsing and plans, the rate limiter, latency
profiles, and the CLI's option merging."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from PIL import Image, ImageChops

from flokan_dagster.emulator import EmulatorConfig, FaultPlan
from flokan_dagster.emulator.cli import build_parser, config_from_args
from flokan_dagster.emulator.faults import FaultBook, FaultRule, FaultSet, parse_fault_header
from flokan_dagster.emulator.rendering import edit, text_to_image
from flokan_dagster.emulator.runtime import RateLimiter, Runtime
from flokan_dagster.emulator.state import Store


def _open(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


def test_rendering_is_deterministic_png_of_the_configured_size() -> None:
    a = text_to_image("a red chair", "pro", None, None, (200, 120))
    assert a == text_to_image("a red chair", "pro", None, None, (200, 120))
    image = _open(a)
    assert (image.format, image.size) == ("PNG", (200, 120))
    variants = [text_to_image("a red chair", *args, (200, 120)) for args in
                (("standard", None, None), ("pro", "s", None), ("pro", None, "c"))]
    assert len({a, *variants}) == 4


def test_edit_transforms_any_source_type_to_the_configured_size() -> None:
    source = text_to_image("a vase", "pro", None, None, (64, 64))
    for fmt in ("PNG", "JPEG", "WEBP", "GIF"):
        out = io.BytesIO()
        _open(source).save(out, format=fmt)
        result = _open(edit(out.getvalue(), "make it blue", "pro", None, None, (96, 96)))
        assert result.size == (96, 96)
    once = edit(source, "make it blue", "pro", None, None, (64, 64))
    assert ImageChops.difference(_open(source).convert("RGB"), _open(once).convert("RGB")).getbbox() is not None
    assert once == edit(source, "make it blue", "pro", None, None, (64, 64))
    assert once != edit(source, "make it green", "pro", None, None, (64, 64))


def test_fault_header_parsing_and_folding() -> None:
    faults = FaultSet()
    for fault in parse_fault_header(" latency;ms=1500 , latency;ms=200,malformed;variant=huge;bytes=10, safety"):
        faults.add(fault)
    assert (faults.latency_ms, faults.malformed, faults.malformed_bytes, faults.safety) == (1500, "huge", 10, True)
    assert parse_fault_header("http_error")[0].params == {"status": 503}
    with pytest.raises(ValueError, match="unknown fault kind"):
        parse_fault_header("explode")


def test_fault_rules_count_down_and_match_prompts() -> None:
    book = FaultBook(FaultPlan())
    book.add_rules([FaultRule(kind="provider_error", times=2, prompt_contains="sku-1"),
                    FaultRule(kind="latency", route="GET /jobs", params={"ms": 5})])
    assert book.matching("POST /process", "sku-2") == []
    assert [f.kind for f in book.matching("POST /process", "sku-1 photo")] == ["provider_error"]
    assert [f.kind for f in book.matching("POST /process", "sku-1 photo")] == ["provider_error"]
    assert book.matching("POST /process", "sku-1 photo") == []
    assert book.matching("GET /jobs", None)[0].params == {"ms": 5}
    assert book.planned({"prompt": "x"}) == []  # an all-zero plan never fires


def test_plan_decisions_depend_on_fields_and_occurrence_only() -> None:
    plan = FaultPlan(seed=4, provider_error_rate=0.5, drop_after_complete_rate=0.5)
    requests = [{"prompt": f"p{i % 5}"} for i in range(40)]
    first = FaultBook(plan)
    second = FaultBook(plan)
    assert [first.planned(r) for r in requests] == [second.planned(r) for r in requests]
    mixed = FaultBook(plan)
    # Interleaving distinct requests differently gives each one the same decisions.
    by_prompt: dict[str, list[object]] = {}
    for r in sorted(requests, key=lambda r: r["prompt"]):
        by_prompt.setdefault(r["prompt"], []).append(mixed.planned(r))
    replay = FaultBook(plan)
    in_order: dict[str, list[object]] = {}
    for r in requests:
        in_order.setdefault(r["prompt"], []).append(replay.planned(r))
    assert by_prompt == in_order


def test_rate_limiter_counts_per_key() -> None:
    limiter = RateLimiter()
    decisions = [limiter.hit("a", 2) for _ in range(3)]
    assert [d.allowed for d in decisions] == [True, True, False]
    assert [d.remaining for d in decisions] == [1, 0, 0]
    assert "Retry-After" in decisions[2].headers() and "Retry-After" not in decisions[0].headers()
    assert limiter.hit("b", 2).allowed


def test_latency_profiles_and_overrides(tmp_path: Path) -> None:
    store = Store(tmp_path / "s.db")
    try:
        realistic = Runtime(EmulatorConfig(latency="realistic", time_scale=0.01), store, "http://127.0.0.1:1")
        draws = [realistic.latency_s(f"job-{i}", None) for i in range(50)]
        assert all(0.1 <= d <= 0.6 for d in draws) and len(set(draws)) > 40
        assert realistic.latency_s("job-1", None) == draws[1]
        fast = Runtime(EmulatorConfig(), store, "http://127.0.0.1:1")
        assert all(0.05 <= fast.latency_s(f"j{i}", None) <= 0.3 for i in range(50))
        fixed = Runtime(EmulatorConfig(latency_ms=1000, time_scale=2), store, "http://127.0.0.1:1")
        assert (fixed.latency_s("j", None), fixed.latency_s("j", 100)) == (2.0, 0.2)
        assert Runtime(EmulatorConfig(latency="zero"), store, "http://127.0.0.1:1").latency_s("j", None) == 0
    finally:
        store.close()


def test_cli_options_override_the_config_file(tmp_path: Path) -> None:
    file = tmp_path / "config.json"
    file.write_text(EmulatorConfig(latency="realistic", demo_credits=5, faults=FaultPlan(seed=3)).model_dump_json())
    args = build_parser().parse_args(["--config", str(file), "--time-scale", "0.1", "--image-size", "64x32",
                                      "--drop-rate", "0.2", "--safety-words", "knife, gun", "--state-dir", "st"])
    config = config_from_args(args)
    assert (config.latency, config.time_scale, config.image_size, config.demo_credits) == ("realistic", 0.1, (64, 32), 5)
    assert (config.faults.seed, config.faults.drop_after_complete_rate) == (3, 0.2)
    assert config.safety_words == ("knife", "gun") and config.state_dir == Path("st")
    assert config_from_args(build_parser().parse_args([])) == EmulatorConfig()
