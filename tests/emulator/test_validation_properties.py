"""Property-based tests of server-side request validation: each request is built from fields
drawn as "valid" or "invalid" by the documented rules, and the server must answer 400 naming
the first invalid field (in the documented field order), or accept the request."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flokan_dagster.emulator import EmulatorServer
from tests.emulator.helpers import api_client, png_bytes

ABSENT = object()
SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
BYOK = {"openai": ("pro", "standard"), "google": ("pro",), "fal": ("pro", "standard", "creative"),
        "kie": ("pro", "standard", "creative")}
TIERS = ("pro", "standard", "creative")
SAFETY_WORDS = ("forbidden", "gore", "violence")

not_a_string = st.one_of(st.integers(), st.floats(allow_nan=False, allow_infinity=False), st.booleans(), st.lists(st.integers(), max_size=2),
                         st.dictionaries(st.text(max_size=3), st.integers(), max_size=2))
safe_text = st.text(min_size=1, max_size=80).filter(
    lambda s: s.strip() != "" and not any(w in s.lower() for w in SAFETY_WORDS))


def field(valid: st.SearchStrategy[Any], invalid: st.SearchStrategy[Any]) -> st.SearchStrategy[tuple[Any, bool]]:
    """Draw ``(value, is_valid)``."""
    return st.one_of(valid.map(lambda v: (v, True)), invalid.map(lambda v: (v, False)))


def uuid_field(existing: str) -> st.SearchStrategy[tuple[Any, bool]]:
    """Absent or an id that exists in the workspace (valid), or something that is not a UUID."""
    bad = st.one_of(not_a_string, st.text(max_size=40).filter(lambda s: not _is_uuid(s)),
                    st.just(uuid.UUID(existing).hex), st.just(existing + "0"))
    return field(st.sampled_from([ABSENT, None, existing, existing.upper()]), bad)


def _is_uuid(text: str) -> bool:
    try:
        return str(uuid.UUID(text)) == text.lower() and len(text) == 36
    except ValueError:
        return False


@pytest.fixture(scope="module")
def prop_ws(emu: EmulatorServer) -> Iterator[dict[str, Any]]:
    """A rich workspace: BYOK on, presets, an uploaded image, plenty of credits and rate limit."""
    admin = emu.admin
    workspace_id = admin.create_workspace("props", credits=10**9, byok_in_plan=True, rate_limit_per_minute=10**6,
                                          byok_providers={p: {"enabled": True} for p in BYOK})
    key = admin.create_key(workspace_id)
    client = api_client(emu, key)
    upload = client.post("/upload-url", json={"file_name": "a.png", "mime_type": "image/png"}).json()["data"]
    httpx.put(upload["upload_url"], content=png_bytes(), headers={"Content-Type": "image/png"})
    yield {"client": client, "image_id": upload["image_id"], "style_id": admin.create_style(workspace_id),
           "character_id": admin.create_character(workspace_id)}
    client.close()


@st.composite
def process_bodies(draw: st.DrawFn, ids: dict[str, str]) -> tuple[dict[str, Any], str | None]:
    """A /process body and the field the server must name (None: the body is valid)."""
    long_prompt = st.integers(10_001, 10_050).map(lambda n: "p" * n)
    fields: list[tuple[str, tuple[Any, bool]]] = [
        ("prompt", draw(field(safe_text, st.one_of(st.just(ABSENT), st.just(None), st.just(""),
                                                     st.text(" \t\n", min_size=1, max_size=5), long_prompt,
                                                     not_a_string)))),
        ("model_tier", draw(field(st.sampled_from(TIERS),
                                  st.one_of(st.just(ABSENT), st.just(None), not_a_string,
                                            st.text(max_size=10).filter(lambda s: s not in TIERS))))),
        ("provider", draw(field(st.sampled_from([ABSENT, None, "platform", *BYOK]),
                                st.one_of(not_a_string, st.text(max_size=10).filter(
                                    lambda s: s not in ("platform", *BYOK)), st.just("PLATFORM"))))),
        ("image_id", draw(uuid_field(ids["image_id"]))),
        ("image_url", draw(field(
            st.one_of(st.just(ABSENT), st.just(None),
                      st.from_regex(r"\Ahttps://example\.invalid/[a-z0-9]{1,20}\.png\Z")),
            st.one_of(not_a_string, st.just(""), st.just("http://example.invalid/a.png"), st.just("https://"),
                      st.just("https://example.invalid/a b.png"), st.just("ftp://example.invalid/a.png"),
                      st.just("https://example.invalid:99999/a.png"),
                      st.just("https://example.invalid/" + "a" * 2000))))),
        ("style_id", draw(uuid_field(ids["style_id"]))),
        ("character_id", draw(uuid_field(ids["character_id"]))),
    ]
    body = {name: value for name, (value, _) in fields if value is not ABSENT}
    expected = next((name for name, (_, ok) in fields if not ok), None)
    tier, provider = body.get("model_tier"), body.get("provider")
    matrix_broken = isinstance(provider, str) and provider in BYOK and tier in TIERS and tier not in BYOK[provider]
    if matrix_broken and expected not in ("prompt", "model_tier", "provider"):
        expected = "provider"
    return body, expected


@SETTINGS
@given(data=st.data())
def test_process_validation_names_the_first_broken_field(prop_ws: dict[str, Any], data: st.DataObject) -> None:
    body, expected = data.draw(process_bodies(prop_ws))
    response = prop_ws["client"].post("/process", json=body)
    payload = response.json()
    if expected is None:
        assert response.status_code == 201, (body, payload)
        assert payload["success"] is True
    else:
        assert response.status_code == 400, (body, expected, payload)
        assert payload["success"] is False and payload["error"].startswith(f"{expected}:"), (body, payload)


json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=20)),
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=12), inner, max_size=4)),
    max_leaves=10,
)
known_keys = st.sampled_from(["prompt", "model_tier", "provider", "image_id", "image_url", "style_id",
                              "character_id", "file_name", "mime_type", "file_size"])


@SETTINGS
@given(path=st.sampled_from(["/process", "/upload-url", "/estimate-credits"]),
       body=st.one_of(json_values, st.dictionaries(known_keys, json_values, max_size=6)))
def test_arbitrary_bodies_never_break_the_server(prop_ws: dict[str, Any], path: str, body: Any) -> None:
    response = prop_ws["client"].post(path, json=body)
    assert response.status_code in (200, 201, 400, 404, 422), (path, body, response.text)
    payload = response.json()
    assert payload["success"] is (response.status_code < 400)
    if response.status_code == 400:
        assert isinstance(payload["error"], str) and ":" in payload["error"]


@SETTINGS
@given(tier=st.one_of(st.sampled_from(TIERS), st.text(max_size=8), st.none()),
       provider=st.one_of(st.sampled_from(["platform", *BYOK]), st.text(max_size=8), st.none()))
def test_estimate_accepts_exactly_the_tier_provider_matrix(prop_ws: dict[str, Any], tier: Any, provider: Any) -> None:
    body = {"model_tier": tier} if provider is None else {"model_tier": tier, "provider": provider}
    response = prop_ws["client"].post("/estimate-credits", json=body)
    allowed_provider = provider in (None, "platform") or provider in BYOK
    valid = tier in TIERS and allowed_provider and (provider not in BYOK or tier in BYOK[provider])
    assert response.status_code == (200 if valid else 400), (body, response.text)
    if valid:
        data = response.json()["data"]
        assert data["estimated_credits"] == (0 if provider in BYOK else {"pro": 50, "standard": 20, "creative": 30}[tier])


@SETTINGS
@given(file_name=field(st.text(min_size=1, max_size=255),
                       st.one_of(st.just(ABSENT), st.just(""), not_a_string, st.text(min_size=256, max_size=300))),
       mime_type=field(st.sampled_from(["image/jpeg", "image/png", "image/webp", "image/gif"]),
                       st.one_of(st.just(ABSENT), not_a_string, st.sampled_from(["image/tiff", "IMAGE/PNG", "png"]))),
       file_size=field(st.one_of(st.just(ABSENT), st.none(), st.integers(0, 10**12)),
                       st.one_of(st.integers(max_value=-1), st.booleans(), st.text(max_size=5), st.floats(0.5, 9.5))))
def test_upload_url_validation(prop_ws: dict[str, Any], file_name: tuple[Any, bool], mime_type: tuple[Any, bool],
                               file_size: tuple[Any, bool]) -> None:
    fields = [("file_name", file_name), ("mime_type", mime_type), ("file_size", file_size)]
    body = {name: value for name, (value, _) in fields if value is not ABSENT}
    expected = next((name for name, (_, ok) in fields if not ok), None)
    response = prop_ws["client"].post("/upload-url", json=body)
    if expected is None:
        assert response.status_code == 201, (body, response.text)
    else:
        assert response.status_code == 400 and response.json()["error"].startswith(f"{expected}:"), (body, response.text)


@SETTINGS
@given(page=field(st.integers(1, 10**6).map(str), st.one_of(st.integers(-10**6, 0).map(str), st.just("1.0"),
                                                             st.just(""), st.text(max_size=4).filter(
                                                                 lambda s: not (s.isascii() and s.isdigit())))),
       per_page=field(st.integers(1, 100).map(str), st.one_of(st.integers(101, 10**4).map(str),
                                                              st.integers(-100, 0).map(str), st.just("ten"))),
       status=field(st.sampled_from(["pending", "processing", "completed", "failed"]),
                    st.text(max_size=10).filter(lambda s: s not in ("pending", "processing", "completed", "failed"))))
def test_jobs_query_validation(prop_ws: dict[str, Any], page: tuple[str, bool], per_page: tuple[str, bool],
                               status: tuple[str, bool]) -> None:
    fields = [("page", page), ("per_page", per_page), ("status", status)]
    expected = next((name for name, (_, ok) in fields if not ok), None)
    response = prop_ws["client"].get("/jobs", params={name: value for name, (value, _) in fields})
    if expected is None:
        assert response.status_code == 200
        meta = response.json()["meta"]
        assert (meta["page"], meta["per_page"]) == (int(page[0]), int(per_page[0]))
    else:
        assert response.status_code == 400 and response.json()["error"].startswith(f"{expected}:"), response.text
