"""FlokanClient against the emulator over HTTP: every endpoint, input mode and error status."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from PIL import Image

from flokan_dagster import (
    FlokanAuthenticationError,
    FlokanByokNotConfiguredError,
    FlokanClient,
    FlokanInsufficientCreditsError,
    FlokanNotFoundError,
    FlokanPermissionError,
    FlokanSafetyFilterError,
    FlokanValidationError,
)
from tests.support import Admin, Workspace, png_bytes


def client_for(workspace: Workspace, **options: object) -> FlokanClient:
    return FlokanClient(api_key=workspace.api_key, base_url=workspace.admin.base_url, **options)


def decode(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


def test_text_to_image_returns_a_charged_completed_job(workspace: Workspace) -> None:
    before = workspace.info()["credits"]
    with client_for(workspace) as client:
        result = client.process("Studio photo of a red ceramic mug", "pro")
        image = decode(client.download(result.result_url))
    assert result.status == "completed"
    assert result.provider_used == "system"
    assert result.credits_consumed == 50
    assert result.result_image_id and result.job_id
    assert image.format == "PNG"
    assert workspace.info()["credits"] == before - 50


def test_upload_then_edit_then_chain(workspace: Workspace, tmp_path: Path) -> None:
    photo = tmp_path / "supplier.png"
    photo.write_bytes(png_bytes())
    with client_for(workspace) as client:
        image_id = client.upload_image(photo)
        edited = client.process("Make the background white", "standard", image_id=image_id)
        chained = client.process("Add soft shadows", "standard", image_id=edited.result_image_id)
        first, second = client.download(edited.result_url), client.download(chained.result_url)
        job = client.get_job(chained.job_id)
    assert edited.credits_consumed == 20
    assert job.image_id == edited.result_image_id
    assert first != second
    assert decode(first).tobytes() != decode(second).tobytes()


def test_upload_from_bytes_with_matching_declared_type(workspace: Workspace) -> None:
    with client_for(workspace) as client:
        image_id = client.upload_image(png_bytes(), mime_type="image/png")
        result = client.process("Recolour it", "creative", image_id=image_id)
    assert result.credits_consumed == 30


def test_image_url_mode(workspace: Workspace) -> None:
    with client_for(workspace) as client:
        result = client.process("Catalog photo", "standard")
        # The emulator serves its own storage origin for image_url; the client insists on https.
        https_url = result.result_url.replace("http://", "https://", 1)
        edited = client.process("Put it on a beach", "standard", image_url=https_url)
        job = client.get_job(edited.job_id)
    assert job.image_url == https_url
    assert job.status == "completed"


def test_style_and_character_presets(workspace: Workspace) -> None:
    style, character = workspace.style(), workspace.character()
    with client_for(workspace) as client:
        result = client.process("Hero shot", "pro", style_id=style, character_id=character)
        job = client.get_job(result.job_id)
        with pytest.raises(FlokanNotFoundError) as err:
            client.process("Hero shot", "pro", style_id="00000000-0000-4000-8000-000000000000")
    assert job.style_id == style and job.character_id == character
    assert err.value.status_code == 404


def test_estimate_credits_platform_and_byok(admin: Admin) -> None:
    workspace = admin.workspace(byok_in_plan=True, byok_providers={"fal": {"enabled": True}})
    with client_for(workspace) as client:
        platform = client.estimate_credits("pro")
        byok = client.estimate_credits("creative", provider="fal")
        result = client.process("BYOK render", "creative", provider="fal")
    assert platform.estimated_credits >= 50
    assert platform.available_credits == workspace.info()["credits"]
    assert byok.estimated_credits == 0 and byok.byok_skips_credits is True
    assert result.credits_consumed == 0 and result.provider_used == "fal"


def test_list_and_iterate_jobs(workspace: Workspace) -> None:
    with client_for(workspace) as client:
        made = [client.process(f"Item {i}", "standard").job_id for i in range(5)]
        page = client.list_jobs(page=1, per_page=2)
        everything = [job.job_id for job in client.iter_jobs(per_page=2)]
        completed = client.list_jobs(status="completed").jobs
    assert [job.job_id for job in page.jobs] == made[::-1][:2]
    assert page.meta.total == 5 and page.meta.total_pages == 3
    assert everything == made[::-1]
    assert {job.job_id for job in completed} == set(made)


def test_iter_jobs_sees_each_job_once_while_new_jobs_arrive(workspace: Workspace) -> None:
    with client_for(workspace) as client:
        old = [client.process(f"Old {i}", "standard").job_id for i in range(6)]
        seen = []
        for index, job in enumerate(client.iter_jobs(per_page=2)):
            seen.append(job.job_id)
            if index == 1:  # new jobs at the head shift the remaining pages by two
                client.process("New A", "standard")
                client.process("New B", "standard")
    assert len(seen) == len(set(seen))
    assert set(old) <= set(seen)


def test_jobs_of_another_workspace_are_not_found(admin: Admin, workspace: Workspace) -> None:
    other = admin.workspace()
    with client_for(workspace) as client, client_for(other) as stranger:
        job_id = client.process("Private", "standard").job_id
        image_id = client.upload_image(png_bytes())
        with pytest.raises(FlokanNotFoundError):
            stranger.get_job(job_id)
        with pytest.raises(FlokanNotFoundError):
            stranger.process("Steal", "standard", image_id=image_id)


def test_authentication_and_permission_errors(admin: Admin, workspace: Workspace) -> None:
    no_scope = admin.key(workspace.workspace_id, scopes=())
    no_permission = admin.key(workspace.workspace_id, permission=False)
    base = admin.base_url
    with pytest.raises(FlokanAuthenticationError) as bad_key:
        FlokanClient(api_key="flk_not_a_real_key", base_url=base).list_jobs()
    with pytest.raises(FlokanPermissionError) as scope:
        FlokanClient(api_key=no_scope, base_url=base).list_jobs()
    with pytest.raises(FlokanPermissionError):
        FlokanClient(api_key=no_permission, base_url=base).process("x", "pro")
    assert bad_key.value.status_code == 401 and scope.value.status_code == 403


def test_insufficient_credits(admin: Admin) -> None:
    poor = admin.workspace(credits=30)
    with client_for(poor) as client:
        assert client.process("Cheap", "standard").credits_consumed == 20
        with pytest.raises(FlokanInsufficientCreditsError) as err:
            client.process("Expensive", "pro")
    assert err.value.status_code == 402
    assert poor.info()["credits"] == 10


def test_safety_filter_and_byok_422_are_told_apart(admin: Admin, workspace: Workspace) -> None:
    with client_for(workspace) as client:
        with pytest.raises(FlokanSafetyFilterError) as safety:
            client.process("a forbidden picture", "pro")
        with pytest.raises(FlokanByokNotConfiguredError) as byok:
            client.process("fine", "pro", provider="openai")
    assert safety.value.status_code == byok.value.status_code == 422


def test_server_side_400_becomes_a_validation_error(workspace: Workspace) -> None:
    with client_for(workspace) as client, pytest.raises(FlokanValidationError) as err:
        client.process("Edit", "pro", image_url="https://images.example.com/photos/missing")
    assert err.value.status_code == 400


@pytest.mark.parametrize(
    ("call", "field"),
    [
        (lambda c: c.process("", "pro"), "prompt"),
        (lambda c: c.process("x" * 10_001, "pro"), "prompt"),
        (lambda c: c.process("ok", "ultra"), "model_tier"),
        (lambda c: c.process("ok", "pro", provider="midjourney"), "provider"),
        (lambda c: c.process("ok", "creative", provider="openai"), "provider"),
        (lambda c: c.process("ok", "standard", provider="google"), "provider"),
        (lambda c: c.process("ok", "pro", image_url="http://example.com/a.png"), "image_url"),
        (lambda c: c.process("ok", "pro", image_url="https://example.com/" + "a" * 2000), "image_url"),
        (lambda c: c.process("ok", "pro", image_id="not-a-uuid"), "image_id"),
        (lambda c: c.process("ok", "pro", style_id="123"), "style_id"),
        (lambda c: c.process("ok", "pro", character_id="abc"), "character_id"),
        (lambda c: c.estimate_credits("pro", provider="kie2"), "provider"),
        (lambda c: c.upload_image(b"GIF89a" + png_bytes()[8:], mime_type="image/png"), "mime_type"),
        (lambda c: c.upload_image(b"plain text, not an image"), "mime_type"),
        (lambda c: c.upload_image(png_bytes(), file_name="x" * 256), "file_name"),
        (lambda c: c.upload_image(png_bytes(), file_name=""), "file_name"),
        (lambda c: c.list_jobs(per_page=101), "per_page"),
        (lambda c: c.list_jobs(status="done"), "status"),
        (lambda c: c.get_job("../../admin"), "job_id"),
    ],
)
def test_each_rule_is_enforced_before_sending(workspace: Workspace, call, field: str) -> None:  # type: ignore[no-untyped-def]
    with client_for(workspace) as client:
        with pytest.raises(FlokanValidationError) as err:
            call(client)
        assert client.stats.requests == 0
    assert err.value.field == field and err.value.status_code is None
    assert field in str(err.value)


def test_storage_and_image_hosts_never_receive_the_key(admin: Admin, workspace: Workspace) -> None:
    with client_for(workspace) as client:
        image_id = client.upload_image(png_bytes())
        result = client.process("Edit", "standard", image_id=image_id)
        client.download(result.result_url)
    log = admin.storage_log()
    assert any(entry["method"] == "PUT" for entry in log)
    assert any(entry["method"] == "GET" for entry in log)
    assert not any(entry["authorization"] for entry in log)


def test_rate_limit_state_is_exposed(admin: Admin) -> None:
    workspace = admin.workspace(rate_limit_per_minute=50)
    with client_for(workspace) as client:
        client.list_jobs()
        client.list_jobs()
        state = client.rate_limit
    assert state is not None
    assert state.limit == 50 and state.remaining == 48
    assert state.reset_s is not None and 0 <= state.reset_s <= 60
