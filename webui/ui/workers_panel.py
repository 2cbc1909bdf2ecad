"""The generation workers' status panel (``--workers`` / ``--ray-address``): what ``GET /webui/v1/workers``
says, refreshed every few seconds. Nothing is shown when generations run in the server process."""

from __future__ import annotations

from typing import Any

import gradio as gr

from webui.context import AppContext

HEADERS = ["Worker", "State", "Node", "PID", "Device", "Checkpoints", "Jobs done", "Restarts"]
REFRESH_SECONDS = 3.0


def worker_rows(ctx: AppContext) -> list[list[Any]]:
    """One row per worker: id, state ("busy <job id>" while it runs one), node, pid, device, the checkpoints
    it holds, jobs done and restarts."""
    if ctx.executor is None:
        return []
    rows = []
    for w in ctx.executor.workers():
        state = f"busy {w['job'][:8]}" if w["state"] == "busy" and w.get("job") else w["state"]
        if w.get("error") and w["state"] in ("restarting", "failed"):
            state = f"{state}: {w['error']}"
        rows.append([w["id"], state, w["node"], w["pid"] or "", w["device"], ", ".join(w["checkpoints"]),
                     w["jobs_done"], w["restarts"]])
    return rows


def build_workers_panel(ctx: AppContext) -> None:
    """A collapsed "Generation workers" panel with the workers' table (only when there are workers)."""
    if ctx.executor is None:
        return
    with gr.Accordion("Generation workers", open=False, elem_id="workers_panel"):
        table = gr.Dataframe(worker_rows(ctx), headers=HEADERS, interactive=False, elem_id="workers_table")
        timer = gr.Timer(REFRESH_SECONDS)
        timer.tick(lambda: worker_rows(ctx), inputs=None, outputs=table, api_name=False, queue=False,
                   show_progress="hidden")
