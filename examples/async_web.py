"""A small async web endpoint: POST an image, get its classification (aiohttp; the ``web`` extra).

    python examples/async_web.py --redis-url redis://localhost:6379/0 --port 8080
    curl --data-binary @examples/images/cat.jpg http://localhost:8080/classify

The handler enqueues the upload with ``AsyncProducer`` and awaits the result; the event loop
serves other requests meanwhile. A photo classified before is answered from the workers' result
cache (``cache=True``) without queueing. ``--redis-url`` may list several servers (shards),
comma-separated. 503 when the queue is full, 504 on timeout, 422 for a bad image.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from aiohttp import web

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from producer import AsyncProducer, JobFailed, JobOptions, JobTimeout, QueueFull

MAX_UPLOAD_BYTES = 20 * 1024 * 1024
PRODUCER = web.AppKey("producer", AsyncProducer)
TIMEOUT_S = web.AppKey("timeout_s", float)


async def classify(request: web.Request) -> web.Response:
    """POST the image bytes as the body; JSON result back."""
    producer: AsyncProducer = request.app[PRODUCER]
    image = await request.read()
    if not image:
        return web.json_response({"error": "send the image bytes as the request body"}, status=400)
    try:
        result = await producer.classify(image, timeout=request.app[TIMEOUT_S], meta={"source": "web"}, cache=True)
    except QueueFull as exc:
        return web.json_response({"error": str(exc)}, status=503, headers={"Retry-After": "1"})
    except JobTimeout as exc:
        return web.json_response({"error": str(exc)}, status=504)
    except JobFailed as exc:
        return web.json_response({"error": exc.error}, status=422)
    return web.json_response({k: result[k] for k in ("job_id", "label", "score", "topk", "model")})


def make_app(redis_url: str, timeout_s: float = 30.0, max_queue_length: int | None = 10_000) -> web.Application:
    """The aiohttp application (one AsyncProducer, closed with the app)."""
    app = web.Application(client_max_size=MAX_UPLOAD_BYTES)
    app[TIMEOUT_S] = timeout_s

    async def start(app: web.Application) -> None:
        app[PRODUCER] = AsyncProducer(redis_url, options=JobOptions(max_queue_length=max_queue_length))

    async def stop(app: web.Application) -> None:
        await app[PRODUCER].close()

    app.on_startup.append(start)
    app.on_cleanup.append(stop)
    app.router.add_post("/classify", classify)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--redis-url", default=os.environ.get("REDIS_URL", "redis://localhost:6379/0"))
    parser.add_argument("--port", type=int, default=8080)
    args = parser.parse_args()
    web.run_app(make_app(args.redis_url), port=args.port)


if __name__ == "__main__":
    main()
