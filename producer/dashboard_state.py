"""The dashboard's state changes that rq-dashboard does its own way, done ours.

- **Requeue** (a job's button, and "requeue all"): rq-dashboard calls RQ's requeue (a read, then writes,
  nothing watched) which neither records ``requeued_after`` (so ``Producer.result()`` and a backfill answer the
  earlier failure at once) nor makes the job persistent (it can expire while it waits in a long queue). These
  routes run the REQUEUE script instead, as ``python -m producer requeue`` does.
- **Several shards**: rq-dashboard's state routes (delete, requeue, empty, compact) name no instance: they act
  on whichever shard the last page read, in any tab of any operator. With more than one ``--redis-url`` every
  state change is refused (409); run one dashboard per shard to change state.
"""

from __future__ import annotations

import logging
from typing import Any

from .dashboard_guard import READ_ONLY_METHODS
from .drivers import SyncDriver
from .errors import ScriptNotLoaded
from .requeue_call import REQUEUED, RequeueCall, run_requeue
from .wire import keys
from .wire.printable import shown

log = logging.getLogger(__name__)
SHARDED_REFUSAL = "state changes need one shard per dashboard: start one with a single --redis-url\n"


def requeue_one(conn: Any, job_id: str) -> str:
    """Requeue a failed job on its own queue with the REQUEUE script; its outcome (``requeued``, ``not_found``...)."""
    origin = conn.hget(keys.job(job_id), "origin") if conn.type(keys.job(job_id)) in (b"hash", "hash") else None
    if not origin:
        return "not_found"
    queue = origin.decode() if isinstance(origin, bytes) else str(origin)
    try:
        outcome, detail = SyncDriver([conn]).run(run_requeue(0, RequeueCall.of(job_id, queue)))
    except ScriptNotLoaded as exc:  # this user may not EVAL, and no worker of this version loaded the script yet
        log.warning("dashboard: job %s not requeued: %s", shown(job_id), exc)
        return "script_not_loaded"
    if outcome != REQUEUED:
        log.warning("dashboard: job %s not requeued: %s %s", shown(job_id), outcome, shown(detail))
    return outcome


def install_state_routes(app: Any, shards: int) -> None:
    """Route the requeue endpoints through the REQUEUE script; with several shards, refuse every state change."""
    from flask import Response, current_app, jsonify, request

    def refuse_when_sharded() -> Response | None:
        if shards > 1 and request.method not in READ_ONLY_METHODS:
            return Response(SHARDED_REFUSAL, 409, mimetype="text/plain")
        return None

    def requeue_job_view(job_id: str) -> Any:
        outcome = requeue_one(current_app.redis_conn, job_id)
        return jsonify(status="OK" if outcome == REQUEUED else outcome.upper()), {"Cache-Control": "no-store"}

    def requeue_all(queue_name: str) -> Any:
        conn = current_app.redis_conn
        ids = [i.decode() if isinstance(i, bytes) else i for i in conn.zrange(keys.failed(queue_name), 0, -1)]
        count = sum(requeue_one(conn, job_id) == REQUEUED for job_id in ids)
        return jsonify(status="OK", count=count), {"Cache-Control": "no-store"}

    app.before_request(refuse_when_sharded)  # after the guard's own hook: a refused request never gets here
    ours = {"rq_dashboard.requeue_job_view": requeue_job_view, "rq_dashboard.requeue_all": requeue_all}
    for endpoint, view in ours.items():
        if endpoint not in app.view_functions:
            raise RuntimeError(f"rq-dashboard has no {endpoint} route any more: its requeue can't be made safe")
        app.view_functions[endpoint] = view
