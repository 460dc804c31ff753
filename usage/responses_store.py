"""TEMPORARY stand-in (not committed): the helper's store replaces it."""
_records = {}


async def save(key, response, input_items, previous_id):
    items = [dict(i, id=i.get("id") or f"item_{n}_{response['id']}") for n, i in enumerate(input_items)]
    _records[(key.tenant_id, response["id"])] = {"response": response, "input_items": items,
                                                 "previous_response_id": previous_id}


async def history(key, response_id):
    chain = []
    while response_id:
        record = _records.get((key.tenant_id, response_id))
        if record is None:
            from gateway_project.lib import errors
            raise errors.GatewayError(404, f"Previous response with id '{response_id}' not found.",
                                      param="previous_response_id")
        chain.append(record)
        response_id = record["previous_response_id"]
    items = []
    for record in reversed(chain):
        items += record["input_items"] + record["response"]["output"]
    return items


async def find_items(key, ids):
    return {}
