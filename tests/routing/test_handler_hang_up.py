"""The API handler runs the view in the request's task and cancels it when the client hangs up."""

import asyncio

from django.http import HttpResponse

from routing.front.handler import ApiHandler

SCOPE = {"type": "http", "method": "POST", "path": "/v1/chat/completions", "raw_path": b"/v1/chat/completions",
         "query_string": b"", "headers": [(b"content-type", b"application/json")], "server": ("127.0.0.1", 80),
         "client": ("127.0.0.1", 5000), "scheme": "http", "root_path": ""}


def _serve(view, hang_up: asyncio.Event):
    """Run one request through the handler with `view`; the client hangs up once `hang_up` is set."""
    handler, sent = ApiHandler(), []
    seen = {}

    async def receive():
        if not seen.get("body"):
            seen["body"] = True
            return {"type": "http.request", "body": b"{}", "more_body": False}
        await hang_up.wait()
        return {"type": "http.disconnect"}

    async def send(message):
        sent.append(message)

    async def main():
        match = type("Match", (), {"func": staticmethod(view), "args": (), "kwargs": {}})()
        handler.resolver.resolve = lambda path: match
        task = asyncio.current_task()
        await handler.handle(SCOPE, receive, send)
        return task.cancelling()

    return asyncio.run(main()), sent


def test_a_client_hanging_up_cancels_the_view_and_the_request_ends_normally():
    hang_up, cancelled = asyncio.Event(), []

    async def view(request):
        hang_up.set()
        try:
            await asyncio.sleep(30)  # a long upstream call
        except asyncio.CancelledError:
            cancelled.append(True)  # where the endpoint records what the call owes
            raise
        return HttpResponse(b"{}")

    cancelling, sent = _serve(view, hang_up)
    assert cancelled == [True]
    assert cancelling == 0  # the hang-up's cancellation does not leak past the handler
    assert sent == []  # nothing was sent to the client that left


def test_a_hang_up_after_the_answer_does_not_cancel_the_work_after_it():
    hang_up, done = asyncio.Event(), []

    async def settle():
        hang_up.set()
        await asyncio.sleep(0.05)  # the settlement's Redis round trip, while the client goes
        done.append("settled")

    async def view(request):
        request.after_response.append(settle)
        return HttpResponse(b"{}")

    cancelling, sent = _serve(view, hang_up)
    assert done == ["settled"]
    assert cancelling == 0
    assert sent[0]["type"] == "http.response.start" and sent[0]["status"] == 200
