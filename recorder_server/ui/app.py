"""The web view: a read-only page over the sidecar's gRPC API, served on loopback.

It is a client of the sidecar like any other (every read goes through
`RecorderClient`), never a second owner of the database. The JSON it serves is
protobuf JSON (`MessageToDict`), except the session outline (see outline.py);
live updates are server-sent events fed by followed gRPC streams.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from contextlib import aclosing
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Final, TypeVar

import grpc
from agent_recorder.v1 import session_pb2
from aiohttp import web
from aiohttp.typedefs import Handler, Middleware
from google.protobuf import json_format
from google.protobuf.message import Message

from recorder_client.client import RecorderClient
from recorder_client.errors import RecorderRpcError
from recorder_server.ui.outline import TURNS_UP_TO, loop_outline, refusal_json, session_outline

log = logging.getLogger(__name__)

STATIC: Final = Path(__file__).parent / "static"
LOOPBACK_HOSTS: Final = frozenset({"127.0.0.1", "localhost", "::1"})
EVENTS_PAGE_MAX: Final = 1000
# A comment line on an idle stream: lets the browser and proxies see it alive and
# lets the server notice a closed tab while the sidecar has nothing to say.
HEARTBEAT_S: Final = 15.0
# Everything the page loads comes from this server; images are inline data.
CSP: Final = "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'"

ClientFactory = Callable[[], RecorderClient]
T = TypeVar("T")

CLIENT: Final = web.AppKey("client", RecorderClient)
STREAMS: Final[web.AppKey[set[asyncio.Task[Any]]]] = web.AppKey("streams")

# Anything else is the sidecar failing the view: 502, with the gRPC code in the body.
_HTTP_STATUS: Final = {
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.INVALID_ARGUMENT: 400,
}


def to_json(message: Message) -> Any:
    return json_format.MessageToDict(message)


def create_app(client_factory: ClientFactory, *, allow_remote: bool = False) -> web.Application:
    """The aiohttp application; the client is made in the serving event loop."""
    app = web.Application(middlewares=[_guard(allow_remote), _rpc_errors])
    app[STREAMS] = set()

    async def client_context(app: web.Application) -> AsyncIterator[None]:
        app[CLIENT] = client_factory()
        yield
        await app[CLIENT].close()

    async def end_streams(app: web.Application) -> None:
        streams: set[asyncio.Task[Any]] = app[STREAMS]
        for task in list(streams):
            task.cancel()

    app.cleanup_ctx.append(client_context)
    app.on_shutdown.append(end_streams)
    app.router.add_get("/", _index)
    app.router.add_static("/static/", STATIC)
    app.router.add_get("/api/sessions", _list_sessions)
    app.router.add_get("/api/sessions/{session_id}", _session)
    app.router.add_get("/api/sessions/{session_id}/live", _session_live)
    app.router.add_get("/api/loops/{loop_id}", _loop)
    app.router.add_get("/api/loops/{loop_id}/outline", _loop_outline)
    app.router.add_get("/api/loops/{loop_id}/events", _loop_events)
    app.router.add_get("/api/loops/{loop_id}/tools/{tool_call_id}", _tool_end)
    app.router.add_get("/api/live", _sessions_live)
    return app


def _guard(allow_remote: bool) -> Middleware:
    """Only GET, and (unless remote use was allowed) only under a loopback host name.

    The host check keeps a web page elsewhere from reading the recordings through
    DNS rebinding: its requests carry its own host name, not a loopback one.
    """

    @web.middleware
    async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.method not in ("GET", "HEAD"):
            raise web.HTTPMethodNotAllowed(request.method, ["GET"])
        if not allow_remote and request.url.host not in LOOPBACK_HOSTS:
            raise web.HTTPForbidden(text=f"host {request.host!r} is not a loopback name")
        response = await handler(request)
        response.headers.setdefault("Content-Security-Policy", CSP)
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        return response

    return guard


@web.middleware
async def _rpc_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """A sidecar error becomes JSON with the gRPC code, so the page can say what failed."""
    try:
        return await handler(request)
    except RecorderRpcError as error:
        return web.json_response(
            {"error": str(error), "code": error.code.name},
            status=_HTTP_STATUS.get(error.code, 502),
        )


async def _index(request: web.Request) -> web.StreamResponse:
    return web.FileResponse(STATIC / "index.html")


def _int_arg(request: web.Request, name: str, default: int) -> int:
    raw = request.query.get(name, "")
    try:
        return int(raw) if raw else default
    except ValueError:
        raise web.HTTPBadRequest(text=f"{name} must be an integer, not {raw!r}") from None


async def _list_sessions(request: web.Request) -> web.StreamResponse:
    """One page of sessions; filters: agent, scope (ephemeral|persistent), since (ISO time)."""
    query = request.query
    scope = query.get("scope", "")
    since = query.get("since", "")
    try:
        since_time = datetime.fromisoformat(since) if since else None
        scope_value = (
            session_pb2.SessionScope.Value(f"SESSION_SCOPE_{scope.upper()}") if scope else None
        )
    except ValueError as error:
        raise web.HTTPBadRequest(text=str(error)) from None
    page = await request.app[CLIENT].list_sessions(
        agent_id=query.get("agent", ""),
        page_size=_int_arg(request, "page_size", 50),
        page_token=query.get("page_token", ""),
        scope=scope_value,
        since=since_time,
    )
    return web.json_response(to_json(page))


async def _session(request: web.Request) -> web.StreamResponse:
    """The outline; a running session also gets the cursor its live stream resumes after.

    The cursor is read before the outline, so whatever is committed in between is
    both in the outline and replayed: the page refreshes once, and misses nothing.
    """
    client = request.app[CLIENT]
    session_id = request.match_info["session_id"]
    session = await client.get_session(session_id, skip_events=True, skip_messages=True)
    cursor = None
    started = [loop.loop_id for loop in session.loops if loop.HasField("started_at")]
    if not session.HasField("finalized_at"):
        cursor = await _last_cursor(client, started[-1]) if started else 0
    # Read again after the cursor, with the cost. Turns only where the outline draws
    # them; a big session's loop rows fetch theirs when expanded.
    skip = len(session.loops) > TURNS_UP_TO
    session, cost = await client.get_session_and_cost(
        session_id, skip_events=True, skip_messages=skip
    )
    outline = session_outline(session, cost, turns_up_to=TURNS_UP_TO)
    outline["cursor"] = cursor
    outline["refusals"] = [
        refusal_json(refusal) async for refusal in client.iter_refusals(session_id)
    ]
    return web.json_response(outline)


async def _last_cursor(client: RecorderClient, loop_id: str) -> int:
    """The commit position of a loop's latest event: every later commit comes after it."""
    last = 0
    async for item in client.stream_events(loop_id=loop_id):
        last = max(last, item.cursor)
    return last


async def _loop(request: web.Request) -> web.StreamResponse:
    loop = await request.app[CLIENT].get_loop(request.match_info["loop_id"], skip_events=True)
    return web.json_response(to_json(loop))


async def _loop_outline(request: web.Request) -> web.StreamResponse:
    """A loop's turns and tool executions, for a big session's timeline row when expanded."""
    client = request.app[CLIENT]
    loop, cost = await client.get_loop_and_cost(request.match_info["loop_id"], skip_events=True)
    return web.json_response(loop_outline(loop, cost))


async def _loop_events(request: web.Request) -> web.StreamResponse:
    """A page of a loop's events after a cursor: a big loop is read a page at a time."""
    limit = min(max(_int_arg(request, "limit", 200), 1), EVENTS_PAGE_MAX)
    stream = request.app[CLIENT].stream_events(
        loop_id=request.match_info["loop_id"],
        after_cursor=_int_arg(request, "after", 0),
        page_size=limit,
    )
    events: list[Any] = []
    try:
        async for item in stream:
            events.append(_event_json(item))
            if len(events) == limit:
                break
    finally:
        await stream.aclose()
    more = len(events) == limit
    return web.json_response({"events": events, "more": more})


async def _tool_end(request: web.Request) -> web.StreamResponse:
    """The ToolExecutionEnd of one tool call, or null: the result the runtime recorded there.

    A turn's tool_results carry a result only when the runtime also put it there;
    the execution's end event always does.
    """
    call_id = request.match_info["tool_call_id"]
    stream = request.app[CLIENT].stream_events(loop_id=request.match_info["loop_id"])
    found: Any = None
    try:
        async for item in stream:
            event = item.event.event
            end = event.tool_execution_end
            if event.WhichOneof("event") == "tool_execution_end" and end.tool_call_id == call_id:
                found = to_json(end)
                break
    finally:
        await stream.aclose()
    return web.json_response(found)


def _event_json(item: Any) -> dict[str, Any]:
    data = {
        "loopId": item.loop_id,
        "cursor": item.cursor,
        "sequence": item.event.sequence,
        "event": to_json(item.event.event),
    }
    if item.event.HasField("refused"):
        data["refused"] = refusal_json(item.event.refused)
    return data


async def _session_live(request: web.Request) -> web.StreamResponse:
    """Events of a session as they are committed, after the cursor the outline gave."""
    stream = request.app[CLIENT].stream_events(
        session_id=request.match_info["session_id"],
        after_cursor=_int_arg(request, "after", 0),
        follow=True,
    )
    return await _serve_events(request, stream, _event_json)


async def _sessions_live(request: web.Request) -> web.StreamResponse:
    """Session admissions, finalizations and deletions, for the sessions list."""
    stream = request.app[CLIENT].watch_sessions(agent_id=request.query.get("agent", ""))
    return await _serve_events(request, stream, to_json)


async def _serve_events(
    request: web.Request, source: AsyncGenerator[T, None], encode: Callable[[T], Any]
) -> web.StreamResponse:
    """Forward a gRPC stream as server-sent events until it ends or the tab goes away."""
    response = web.StreamResponse(
        headers={"Content-Type": "text/event-stream", "Cache-Control": "no-store"}
    )
    task = asyncio.current_task()
    assert task is not None
    request.app[STREAMS].add(task)
    try:
        await response.prepare(request)
        async with aclosing(source):
            await _pump(response, source, encode)
        await response.write(b"event: end\ndata: {}\n\n")
    except RecorderRpcError as error:
        message = json.dumps({"error": str(error), "code": error.code.name})
        await response.write(f"event: failure\ndata: {message}\n\n".encode())
    except ConnectionResetError:
        log.debug("a live view went away")
    finally:
        request.app[STREAMS].discard(task)
    return response


async def _pump(
    response: web.StreamResponse, source: AsyncGenerator[T, None], encode: Callable[[T], Any]
) -> None:
    next_item: asyncio.Future[T] = asyncio.ensure_future(anext(source))
    try:
        while True:
            done, _ = await asyncio.wait({next_item}, timeout=HEARTBEAT_S)
            if not done:
                await response.write(b": alive\n\n")
                continue
            try:
                item = next_item.result()
            except StopAsyncIteration:
                return
            await response.write(f"data: {json.dumps(encode(item))}\n\n".encode())
            next_item = asyncio.ensure_future(anext(source))
    finally:
        # The pending read must be finished before the stream can be closed.
        next_item.cancel()
        await asyncio.wait({next_item})


@dataclass
class RunningUi:
    """A served web view: its URL, and how to stop it."""

    url: str
    runner: web.AppRunner

    async def stop(self) -> None:
        await self.runner.cleanup()


async def start_ui(
    client_factory: ClientFactory,
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    allow_remote: bool = False,
) -> RunningUi:
    """Serve the web view on host:port (0 picks a free port); the URL names the real one."""
    runner = web.AppRunner(
        create_app(client_factory, allow_remote=allow_remote),
        handler_cancellation=True,
        shutdown_timeout=2.0,
        access_log=None,
    )
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
    except BaseException:
        await runner.cleanup()
        raise
    sockets = runner.addresses
    bound_port = sockets[0][1] if sockets else port
    shown = f"[{host}]" if ":" in host else host
    return RunningUi(url=f"http://{shown}:{bound_port}/", runner=runner)
