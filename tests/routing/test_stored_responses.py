"""GET/DELETE /v1/responses/{id} and its input_items, through the official openai SDK: what a
client sees of stored responses, another tenant's and a restricted key's 404s, and pagination."""

import asyncio

import httpx
import openai
import pytest

from keys import services as key_services
from keys.auth import info_for
from keys.models import ApiKey
from tests.conftest import wait_until
from tests.usage.test_responses_store import response, user_says
from usage import recorder, responses_store
from usage.models import StoredResponse


def sdk(gateway, secret: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway.url + "/v1", api_key=secret, max_retries=0, timeout=20)


def issued(tenant, **fields):
    row, secret = key_services.issue(tenant, "responses key", **fields)
    return info_for(ApiKey.objects.select_related("tenant").get(pk=row.pk)), secret


def saved(key, text: str = "Hello!", items=None, previous=None) -> dict:
    answer = response(text)
    asyncio.run(responses_store.save(key, answer, items or [user_says("Hi")], previous))
    return answer


@pytest.fixture()
def keyed(gateway, tenant):
    key, secret = issued(tenant)
    return key, sdk(gateway, secret), secret


def test_retrieve_returns_the_stored_response_at_once_and_after_the_drain(keyed):
    key, client, _ = keyed
    answer = saved(key, "Hello there!")
    got = client.responses.retrieve(answer["id"])  # no wait: the record is in Redis already
    assert got.id == answer["id"] and got.output_text == "Hello there!" and got.status == "completed"
    recorder.drain_all()
    assert StoredResponse.objects.filter(response_id=answer["id"]).exists()
    assert client.responses.retrieve(answer["id"]).model_dump(exclude_unset=True) == got.model_dump(exclude_unset=True)


def test_delete_then_every_endpoint_answers_404(keyed, gateway):
    key, client, _ = keyed
    answer = saved(key)
    assert client.responses.delete(answer["id"]) is None
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(answer["id"])
    with pytest.raises(openai.NotFoundError):
        client.responses.delete(answer["id"])
    with pytest.raises(openai.NotFoundError):
        client.responses.input_items.list(answer["id"])
    # The gateway's own drainer may be between inserting the row and honouring the tombstone.
    recorder.drain_all()
    assert wait_until(lambda: not StoredResponse.objects.filter(response_id=answer["id"]).exists())
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(answer["id"])


def test_delete_answers_openais_deleted_object(keyed, gateway):
    key, _, secret = keyed
    answer = saved(key)
    raw = httpx.delete(f"{gateway.url}/v1/responses/{answer['id']}",
                       headers={"authorization": f"Bearer {secret}"})
    assert raw.status_code == 200
    assert raw.json() == {"id": answer["id"], "object": "response", "deleted": True}


def test_another_tenants_response_and_a_key_that_may_not_use_its_model_are_404(keyed, gateway, tenant, other_tenant):
    key, own, _ = keyed
    answer = saved(key)
    _, outsider_secret = issued(other_tenant)
    _, narrow_secret = issued(tenant, models_allowed=["something-else"])
    for secret in (outsider_secret, narrow_secret):
        client = sdk(gateway, secret)
        for call in (client.responses.retrieve, client.responses.delete, client.responses.input_items.list,
                     client.responses.cancel):
            with pytest.raises(openai.NotFoundError) as missing:
                call(answer["id"])
            assert missing.value.body == {"message": f"Response with id '{answer['id']}' not found.",
                                          "type": "invalid_request_error", "param": None, "code": None}
    assert own.responses.retrieve(answer["id"]).id == answer["id"]  # still there for its own tenant


def test_input_items_list_the_conversation_newest_first_and_page_like_openai(keyed):
    key, client, _ = keyed
    first = saved(key, "One.", [user_says("Count with me")])
    tool_output = {"type": "function_call_output", "call_id": "call_1", "output": "2"}
    second = saved(key, "Two.", [user_says("Go on"), tool_output], first["id"])
    page = client.responses.input_items.list(second["id"])
    kinds = [(item.type, getattr(item, "role", None)) for item in page.data]
    assert kinds == [("function_call_output", None), ("message", "user"), ("message", "assistant"),
                     ("message", "user")]
    assert page.data[0].id.startswith("fco_") and page.data[1].id.startswith("msg_")
    assert page.data[2].id == first["output"][0]["id"]
    assert page.has_more is False

    ascending = client.responses.input_items.list(second["id"], order="asc", limit=3)
    assert [item.id for item in ascending.data] == [item.id for item in reversed(page.data)][:3]
    assert ascending.has_more is True
    # The SDK's auto-pagination follows `after` to the end.
    assert [item.id for item in client.responses.input_items.list(second["id"], limit=1)] == \
        [item.id for item in page.data]
    listing = client.get(f"/responses/{second['id']}/input_items", cast_to=httpx.Response,
                         options={"params": {"limit": 2, "before": page.data[3].id}}).json()
    assert [item["id"] for item in listing["data"]] == [page.data[0].id, page.data[1].id]
    assert (listing["object"], listing["first_id"], listing["last_id"], listing["has_more"]) == \
        ("list", page.data[0].id, page.data[1].id, True)


@pytest.mark.parametrize(("query", "param"), [
    ("limit=0", "limit"), ("limit=101", "limit"), ("limit=ten", "limit"), ("order=newest", "order"),
    ("after=msg_nope", "after"), ("page=2", "page"),
])
def test_bad_listing_parameters_are_a_400_naming_them(keyed, gateway, query, param):
    key, _, secret = keyed
    answer = saved(key)
    raw = httpx.get(f"{gateway.url}/v1/responses/{answer['id']}/input_items?{query}",
                    headers={"authorization": f"Bearer {secret}"})
    assert raw.status_code == 400
    assert raw.json()["error"]["param"] == param


def test_background_features_are_a_clear_400(keyed):
    key, client, _ = keyed
    answer = saved(key)
    with pytest.raises(openai.BadRequestError) as streamed:
        client.responses.retrieve(answer["id"], stream=True)
    assert streamed.value.body["param"] == "stream" and "background" in streamed.value.body["message"]
    with pytest.raises(openai.BadRequestError) as cancelled:
        client.responses.cancel(answer["id"])
    assert cancelled.value.body["param"] == "background"
    assert "Cannot cancel a synchronous response" in cancelled.value.body["message"]


def test_without_a_key_the_answer_is_401(gateway):
    raw = httpx.get(f"{gateway.url}/v1/responses/resp_anything")
    assert raw.status_code == 401
    assert raw.json()["error"]["code"] == "missing_api_key"


@pytest.mark.parametrize("response_id", ["resp_%00x", "x" * 300, "resp_%C3%A9", "resp_'--"])
def test_ids_no_response_could_have_are_a_404(keyed, gateway, response_id):
    _, _, secret = keyed
    raw = httpx.get(f"{gateway.url}/v1/responses/{response_id}", headers={"authorization": f"Bearer {secret}"})
    assert raw.status_code == 404
    assert raw.json()["error"]["type"] == "invalid_request_error"
