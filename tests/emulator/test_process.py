"""POST /process and POST /estimate-credits: results, images, presets, BYOK, safety, credits and
the order of the checks."""

from __future__ import annotations

import io
import re
import uuid
from collections.abc import Callable

import httpx
import pytest
from PIL import Image, ImageChops, ImageStat

from flokan_dagster.emulator import DEMO_CHARACTER_ID, DEMO_STYLE_ID, SYSTEM_STYLE_IDS, EmulatorServer
from tests.emulator.helpers import Workspace

ISO_MS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


def _image(url: str) -> Image.Image:
    response = httpx.get(url)
    assert response.status_code == 200, url
    assert response.headers["content-type"] == "image/png"
    image = Image.open(io.BytesIO(response.content))
    image.load()
    return image


def _mean_difference(a: Image.Image, b: Image.Image) -> float:
    return sum(ImageStat.Stat(ImageChops.difference(a.convert("RGB"), b.convert("RGB"))).mean) / 3


def test_text_to_image_returns_the_documented_shape(emu: EmulatorServer, ws: Workspace) -> None:
    response = ws.client.post("/process", json={"prompt": "a red chair", "model_tier": "pro"})
    assert response.status_code == 201
    body = response.json()
    assert body["success"] is True
    data = body["data"]
    assert set(data) == {"job_id", "status", "result_url", "result_image_id", "model_tier", "provider_used",
                         "credits_consumed", "processing_ms", "created_at", "completed_at"}
    assert data["status"] == "completed" and data["model_tier"] == "pro" and data["provider_used"] == "system"
    assert data["credits_consumed"] == 50
    assert uuid.UUID(data["job_id"]).version == 4 and uuid.UUID(data["result_image_id"]).version == 4
    assert ISO_MS.match(data["created_at"]) and ISO_MS.match(data["completed_at"])
    assert data["completed_at"] >= data["created_at"] and data["processing_ms"] >= 0
    assert data["result_url"] == f"{emu.storage_url}/{ws.workspace_id}/processed/{data['job_id']}.png"
    assert _image(data["result_url"]).size == (128, 128)
    assert emu.admin.workspace(ws.workspace_id)["credits"] == 10_000 - 50


@pytest.mark.parametrize(("tier", "cost"), [("pro", 50), ("standard", 20), ("creative", 30)])
def test_each_tier_charges_its_cost(emu: EmulatorServer, ws: Workspace, tier: str, cost: int) -> None:
    data = ws.client.post("/process", json={"prompt": "a lamp", "model_tier": tier}).json()["data"]
    assert data["credits_consumed"] == cost
    state = emu.admin.workspace(ws.workspace_id)
    assert (state["credits"], state["credits_deducted"]) == (10_000 - cost, cost)


def test_same_prompt_tier_and_style_give_the_same_pixels(ws: Workspace) -> None:
    body = {"prompt": "a wooden stool", "model_tier": "standard", "style_id": SYSTEM_STYLE_IDS["lifestyle"]}
    first = ws.client.post("/process", json=body).json()["data"]
    second = ws.client.post("/process", json=body).json()["data"]
    assert first["job_id"] != second["job_id"]
    reference = _image(first["result_url"])
    assert reference.tobytes() == _image(second["result_url"]).tobytes()
    for change in ({"model_tier": "pro"}, {"prompt": "a metal stool"}, {"style_id": SYSTEM_STYLE_IDS["studio-white"]}):
        other = ws.client.post("/process", json={**body, **change}).json()["data"]
        assert _mean_difference(reference, _image(other["result_url"])) > 5, change


def test_chained_edit_visibly_differs_from_its_source(ws: Workspace) -> None:
    source = ws.client.post("/process", json={"prompt": "a blue vase", "model_tier": "pro"}).json()["data"]
    edit = ws.client.post("/process", json={"prompt": "put it on a beach", "model_tier": "standard",
                                            "image_id": source["result_image_id"]}).json()["data"]
    again = ws.client.post("/process", json={"prompt": "make it night", "model_tier": "standard",
                                             "image_id": edit["result_image_id"]}).json()["data"]
    images = [_image(d["result_url"]) for d in (source, edit, again)]
    assert _mean_difference(images[0], images[1]) > 10
    assert _mean_difference(images[1], images[2]) > 10
    row = ws.client.get(f"/jobs/{edit['job_id']}").json()["data"]
    assert row["image_id"] == source["result_image_id"] and row["image_url"] is None


def test_demo_presets_and_system_styles_resolve(emu: EmulatorServer, demo: httpx.Client, ws: Workspace) -> None:
    body = {"prompt": "a teapot", "model_tier": "creative", "style_id": DEMO_STYLE_ID,
            "character_id": DEMO_CHARACTER_ID}
    data = demo.post("/process", json=body).json()["data"]
    row = demo.get(f"/jobs/{data['job_id']}").json()["data"]
    assert (row["style_id"], row["character_id"]) == (DEMO_STYLE_ID, DEMO_CHARACTER_ID)
    system = ws.client.post("/process", json={"prompt": "x", "model_tier": "pro",
                                              "style_id": SYSTEM_STYLE_IDS["studio-white"]})
    assert system.status_code == 201


def test_workspace_presets_created_by_admin(emu: EmulatorServer, ws: Workspace) -> None:
    style = emu.admin.create_style(ws.workspace_id, "white background")
    character = emu.admin.create_character(ws.workspace_id, "mascot")
    body = {"prompt": "x", "model_tier": "pro", "style_id": style, "character_id": character}
    assert ws.client.post("/process", json=body).status_code == 201


def test_another_workspaces_style_character_and_image_are_404(
    emu: EmulatorServer, ws: Workspace, make_workspace: Callable[..., Workspace]
) -> None:
    other = make_workspace()
    foreign_style = emu.admin.create_style(other.workspace_id)
    foreign_character = emu.admin.create_character(other.workspace_id)
    foreign_image = other.client.post("/process", json={"prompt": "x", "model_tier": "pro"}).json()["data"]
    for field, value in (("style_id", foreign_style), ("character_id", foreign_character),
                         ("image_id", foreign_image["result_image_id"]), ("style_id", str(uuid.uuid4())),
                         ("character_id", DEMO_STYLE_ID), ("image_id", str(uuid.uuid4()))):
        response = ws.client.post("/process", json={"prompt": "x", "model_tier": "pro", field: value})
        assert response.status_code == 404, (field, value)
        assert response.json()["error"].startswith(field)
    assert emu.admin.workspace(ws.workspace_id)["jobs"] == 0


def test_image_url_is_synthesised_never_fetched(ws: Workspace) -> None:
    url = "https://example.invalid/catalog/sku-1.jpg"
    first = ws.client.post("/process", json={"prompt": "remove background", "model_tier": "pro", "image_url": url})
    second = ws.client.post("/process", json={"prompt": "remove background", "model_tier": "pro", "image_url": url})
    assert first.status_code == second.status_code == 201
    a, b = (_image(r.json()["data"]["result_url"]) for r in (first, second))
    assert a.tobytes() == b.tobytes()
    row = ws.client.get(f"/jobs/{first.json()['data']['job_id']}").json()["data"]
    assert row["image_url"] == url and row["image_id"] is None
    missing = ws.client.post("/process", json={"prompt": "x", "model_tier": "pro",
                                               "image_url": "https://example.invalid/a/missing"})
    assert missing.status_code == 400 and missing.json()["error"] == "image_url could not be fetched"


def test_image_url_on_the_storage_origin_reads_the_store(emu: EmulatorServer, ws: Workspace) -> None:
    source = ws.client.post("/process", json={"prompt": "a sofa", "model_tier": "pro"}).json()["data"]
    https_url = source["result_url"].replace("http://", "https://")
    edit = ws.client.post("/process", json={"prompt": "make it red", "model_tier": "pro", "image_url": https_url})
    assert edit.status_code == 201
    absent = https_url.replace(source["job_id"], str(uuid.uuid4()))
    response = ws.client.post("/process", json={"prompt": "x", "model_tier": "pro", "image_url": absent})
    assert response.status_code == 400 and "could not be fetched" in response.json()["error"]


def test_image_id_wins_over_image_url(ws: Workspace) -> None:
    source = ws.client.post("/process", json={"prompt": "a cup", "model_tier": "pro"}).json()["data"]
    body = {"prompt": "tint", "model_tier": "pro", "image_id": source["result_image_id"],
            "image_url": "https://example.invalid/a/missing"}
    response = ws.client.post("/process", json=body)
    assert response.status_code == 201
    row = ws.client.get(f"/jobs/{response.json()['data']['job_id']}").json()["data"]
    assert row["image_id"] == source["result_image_id"] and row["image_url"] is None


def test_byok_is_free_and_names_the_provider(emu: EmulatorServer, ws: Workspace) -> None:
    for provider, tier in (("openai", "standard"), ("google", "pro"), ("fal", "creative"), ("kie", "pro")):
        data = ws.client.post("/process", json={"prompt": "x", "model_tier": tier, "provider": provider}).json()["data"]
        assert (data["provider_used"], data["credits_consumed"]) == (provider, 0)
        row = ws.client.get(f"/jobs/{data['job_id']}").json()["data"]
        assert (row["provider"], row["provider_used"]) == (provider, provider)
    assert emu.admin.workspace(ws.workspace_id)["credits_deducted"] == 0


def test_byok_matrix_mismatch_is_400(ws: Workspace) -> None:
    for provider, tier in (("openai", "creative"), ("google", "standard"), ("google", "creative")):
        response = ws.client.post("/process", json={"prompt": "x", "model_tier": tier, "provider": provider})
        assert response.status_code == 400
        assert response.json()["error"].startswith("provider:")


def test_byok_without_plan_or_config_is_422(make_workspace: Callable[..., Workspace]) -> None:
    no_plan = make_workspace(byok_in_plan=False, byok_providers={"openai": {"enabled": True}})
    response = no_plan.client.post("/process", json={"prompt": "x", "model_tier": "pro", "provider": "openai"})
    assert response.status_code == 422 and "plan" in response.json()["error"]
    partial = make_workspace(byok_in_plan=True, byok_providers={"openai": {"enabled": False}})
    for provider in ("openai", "fal"):
        response = partial.client.post("/process", json={"prompt": "x", "model_tier": "pro", "provider": provider})
        assert response.status_code == 422
        assert "not configured and enabled" in response.json()["error"]
    estimate = partial.client.post("/estimate-credits", json={"model_tier": "pro", "provider": "openai"})
    assert estimate.status_code == 422


def test_safety_words_are_422_and_create_no_job(emu: EmulatorServer, ws: Workspace) -> None:
    response = ws.client.post("/process", json={"prompt": "A scene of VIOLENCE", "model_tier": "pro"})
    assert response.status_code == 422 and "safety filter" in response.json()["error"]
    assert emu.admin.workspace(ws.workspace_id)["jobs"] == 0


def test_insufficient_credits_is_402_and_creates_no_job(
    emu: EmulatorServer, make_workspace: Callable[..., Workspace]
) -> None:
    poor = make_workspace(credits=49, byok_in_plan=True, byok_providers={"fal": {"enabled": True}})
    response = poor.client.post("/process", json={"prompt": "x", "model_tier": "pro"})
    assert response.status_code == 402 and "insufficient AI credits" in response.json()["error"]
    assert poor.client.post("/process", json={"prompt": "x", "model_tier": "standard"}).status_code == 201
    assert poor.client.post("/process", json={"prompt": "x", "model_tier": "creative"}).status_code == 402
    byok = poor.client.post("/process", json={"prompt": "x", "model_tier": "pro", "provider": "fal"})
    assert byok.status_code == 201
    state = emu.admin.workspace(poor.workspace_id)
    assert (state["credits"], state["jobs"]) == (29, 2)


def test_check_order_validation_byok_lookup_safety_credits(
    make_workspace: Callable[..., Workspace]
) -> None:
    broke = make_workspace(credits=0, byok_in_plan=False)
    unknown = str(uuid.uuid4())

    def status(**body: object) -> int:
        return broke.client.post("/process", json={"prompt": "x", "model_tier": "pro", **body}).status_code

    assert status(model_tier="ultra", style_id=unknown) == 400
    assert status(provider="openai", style_id=unknown) == 422
    assert status(style_id=unknown, prompt="gore") == 404
    assert status(prompt="gore") == 422
    assert status() == 402


def test_estimate_credits_is_an_upper_bound_of_the_charge(ws: Workspace) -> None:
    for tier in ("pro", "standard", "creative"):
        estimate = ws.client.post("/estimate-credits", json={"model_tier": tier})
        assert estimate.status_code == 200
        data = estimate.json()["data"]
        assert set(data) == {"model_tier", "provider", "estimated_credits", "is_exact", "available_credits",
                             "can_proceed", "byok_skips_credits"}
        assert data["provider"] == "platform" and data["byok_skips_credits"] is False and data["can_proceed"]
        charged = ws.client.post("/process", json={"prompt": "x", "model_tier": tier}).json()["data"]
        assert charged["credits_consumed"] <= data["estimated_credits"]
    byok = ws.client.post("/estimate-credits", json={"model_tier": "pro", "provider": "google"}).json()["data"]
    assert (byok["estimated_credits"], byok["byok_skips_credits"], byok["can_proceed"]) == (0, True, True)
    bad = ws.client.post("/estimate-credits", json={"model_tier": "creative", "provider": "openai"})
    assert bad.status_code == 400


def test_estimate_reports_the_balance(make_workspace: Callable[..., Workspace]) -> None:
    poor = make_workspace(credits=25)
    data = poor.client.post("/estimate-credits", json={"model_tier": "pro"}).json()["data"]
    assert (data["available_credits"], data["estimated_credits"], data["can_proceed"]) == (25, 50, False)


def test_image_url_with_a_bad_port_is_400(ws: Workspace) -> None:
    response = ws.client.post("/process", json={"prompt": "x", "model_tier": "pro",
                                                "image_url": "https://example.invalid:99999/a.png"})
    assert response.status_code == 400 and response.json()["error"].startswith("image_url:")
