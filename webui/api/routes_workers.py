"""``GET /webui/v1/workers``: the generation workers (``--workers`` / ``--ray-address``): each one's id, node,
pid, device, state (idle, or busy with a job id; starting, restarting, failed), the checkpoints it holds
(the current one first, then its cache), checkpoint loads and jobs done. Without workers (generations run in
the server process) the list is empty and ``executor`` is ``"in-process"``."""

from __future__ import annotations

from fastapi import APIRouter
from pydantic import BaseModel, Field

from webui.context import AppContext


class WorkerItem(BaseModel):
    id: int
    state: str = Field(description="starting, idle, busy, restarting or failed")
    job: str | None = Field(None, description="the id of the job it runs (busy)")
    node: str = ""
    pid: int | None = None
    device: str = ""
    checkpoints: list[str] = Field(default_factory=list, description="loaded: the current one first, then its cache")
    loads: int = Field(0, description="checkpoints read from disk since it (re)started")
    jobs_done: int = 0
    restarts: int = 0
    error: str = Field("", description="why it was lost or could not start")


class WorkersResponse(BaseModel):
    executor: str = Field(description="in-process, or ray")
    workers: list[WorkerItem]


def build_workers_router(ctx: AppContext) -> APIRouter:
    r = APIRouter(prefix="/webui/v1", tags=["webui"])

    @r.get("/workers", response_model=WorkersResponse)
    def workers() -> WorkersResponse:
        executor = ctx.executor
        if executor is None:
            return WorkersResponse(executor="in-process", workers=[])
        return WorkersResponse(executor=str(getattr(executor, "kind", "other")),
                               workers=[WorkerItem(**w) for w in executor.workers()])

    return r
