"""Stages a test gateway loads through GATEWAY_STAGES (tests/routing/test_stages.py): a refusal on input and
a rewrite of the answer, JSON and streamed, on every front."""

from gateway_project.lib import errors
from routing.front import stages


class RefuseWord(stages.Stage):
    """Refuses a call whose last user message says "forbidden"."""

    name = "test-refuse-word"

    async def on_request(self, call, front):
        messages = call.body.get("messages") or [{"content": call.body.get("prompt")}]
        if "forbidden" in str(messages[-1].get("content")):
            raise errors.bad_request("The prompt holds a forbidden word.", code="content_blocked")
        return None


class Shout(stages.Stage):
    """Upper-cases the answer's text, in JSON answers and in streams."""

    name = "test-shout"

    def applies(self, call):
        return call.endpoint != "embeddings"

    async def on_answer(self, call, answer):
        for choice in answer.get("choices", ()):
            if isinstance((choice.get("message") or {}).get("content"), str):
                choice["message"]["content"] = choice["message"]["content"].upper()
            if isinstance(choice.get("text"), str):
                choice["text"] = choice["text"].upper()
        return answer

    def on_stream(self, call, reads):
        async def shouted():
            async for events in reads:
                for event in events:
                    for chunk in event.chunks or ():
                        for choice in chunk.get("choices", ()):
                            delta = choice.get("delta") or {}
                            if isinstance(delta.get("content"), str):
                                delta["content"] = delta["content"].upper()
                            if isinstance(choice.get("text"), str):
                                choice["text"] = choice["text"].upper()
                yield events

        return shouted()


refuse_word = RefuseWord()
shout = Shout()
