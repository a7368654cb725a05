"""The baseline: a bare Ray Serve FastAPI ingress that passes a chat request to a stub pool.

What any Serve HTTP front end costs, with none of the router's features: no auth, no token count
(a byte estimate for the replica's load), no cap, no quota, no ledger, no spans, Serve's default
power-of-two router. It answers in the OpenAI shape, streaming or not, so the same client times it.
"""

from __future__ import annotations

import json

from fastapi import FastAPI, Request
from fastapi.responses import StreamingResponse
from ray import serve

from common.protocol import DELTA, END, GenerateRequest

app = FastAPI()


@serve.deployment(ray_actor_options={"num_cpus": 0}, max_ongoing_requests=1000)
@serve.ingress(app)
class BareIngress:
    def __init__(self, pool):
        self._pool = pool.options(stream=True)
        self._n = 0

    def _request(self, body: dict) -> GenerateRequest:
        self._n += 1
        messages = body["messages"]
        return GenerateRequest(
            request_id=f"bare-{self._n}", kind="chat", context_limit=40_960, messages=messages,
            prompt_tokens=sum(len(str(m.get("content", ""))) for m in messages) // 4 + 8,
            max_tokens=body.get("max_tokens"), sampling={"ignore_eos": bool(body.get("ignore_eos"))})

    @app.post("/v1/chat/completions")
    async def chat(self, request: Request):
        body = await request.json()
        events = self._pool.generate.remote(self._request(body))
        if not body.get("stream"):
            text, usage = [], {}
            async for event in events:
                if event["event"] == DELTA:
                    text.append(event["content"])
                elif event["event"] == END:
                    usage = {"prompt_tokens": event["prompt_tokens"], "completion_tokens": event["completion_tokens"]}
            return {"object": "chat.completion", "choices": [
                {"index": 0, "message": {"role": "assistant", "content": "".join(text)}, "finish_reason": "stop"}],
                "usage": usage}

        async def sse():
            async for event in events:
                if event["event"] == DELTA:
                    delta = {"content": event["content"], "reasoning_content": event["reasoning"]}
                    yield f"data: {json.dumps({'choices': [{'index': 0, 'delta': delta}]})}\n\n"
                elif event["event"] == END:
                    usage = {"prompt_tokens": event["prompt_tokens"], "completion_tokens": event["completion_tokens"]}
                    yield f"data: {json.dumps({'choices': [], 'usage': usage})}\n\n"
            yield "data: [DONE]\n\n"

        return StreamingResponse(sse(), media_type="text/event-stream")
