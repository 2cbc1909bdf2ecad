"""The Checkpoint Merger tab: weighted sum / add difference of checkpoints, saved as .safetensors."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import gradio as gr

from webui.context import AppContext
from webui.jobs import Job
from webui.models.merge import METHODS, MergeRequest, merge_checkpoints
from webui.models.vae_files import list_vae_files
from webui.sections import icon_button
from webui.ui.progress import USER_ERRORS, named_handler, user_error


def _titles(ctx: AppContext) -> list[str]:
    return [ctx.models.title(i) for i in ctx.models.checkpoints()]


def _vae_choices(ctx: AppContext) -> list[str]:
    return ["None", *(f.name for f in list_vae_files(ctx.settings.vae_dirs()))]  # the list Settings shows


def run_merge(ctx: AppContext, request: MergeRequest, progress: Any = None) -> Path:
    """Merge in the shared job queue, then list the new checkpoint (with its hash) at once."""
    job = Job(kind="model-merge")
    with ctx.jobs.slot(job):
        job.set_stage(0, 0, "Merging")

        def report(done: int, total: int) -> None:
            if job.sampling_steps != total:
                job.set_stage(0, total, "Merging")
            job.step(done)
            if progress is not None and (done == total or done % 50 == 0):
                progress(done / max(total, 1), desc=f"Merging {done}/{total}")

        path = merge_checkpoints(request, checkpoint_paths=ctx.models.find,
                                 vae_dirs=ctx.settings.vae_dirs(),
                                 out_dir=ctx.settings.model_dir("Stable-diffusion"),
                                 hashes=ctx.models.hashes, progress=report)
    ctx.models.hashes.sha256(path)  # so the new title carries its short hash, like A1111's
    ctx.models.refresh()
    return path


def build_merger_tab(ctx: AppContext) -> dict[str, Any]:
    """Create the tab; returns its components by name."""
    f: dict[str, Any] = {}
    titles = _titles(ctx)
    with gr.Row():
        with gr.Column():
            gr.Markdown("A merger of two or three checkpoints. The result is saved as a .safetensors file in "
                        "the Stable-diffusion model folder, with the recipe in its metadata.")
            with gr.Row():
                f["primary"] = gr.Dropdown(titles, value=None, label="Primary model (A)",
                                           elem_id="modelmerger_primary_model_name", allow_custom_value=True)
                f["secondary"] = gr.Dropdown(titles, value=None, label="Secondary model (B)",
                                             elem_id="modelmerger_secondary_model_name", allow_custom_value=True)
                f["tertiary"] = gr.Dropdown(titles, value=None, label="Tertiary model (C)",
                                            elem_id="modelmerger_tertiary_model_name", allow_custom_value=True)
                refresh = gr.Button(**icon_button("refresh"), elem_id="modelmerger_refresh_checkpoint_names", scale=0)
            f["custom_name"] = gr.Textbox(label="Custom Name (Optional)", elem_id="modelmerger_custom_name")
            f["multiplier"] = gr.Slider(0.0, 1.0, value=0.3, step=0.05,
                                        label="Multiplier (M) - set to 0 to get model A",
                                        elem_id="modelmerger_interp_amount")
            f["interp_method"] = gr.Radio(list(METHODS), value="Weighted sum", label="Interpolation Method",
                                          elem_id="modelmerger_interp_method",
                                          info="Weighted sum: A*(1-M) + B*M; Add difference: A + (B-C)*M")
            f["save_as_half"] = gr.Checkbox(False, label="Save as float16", elem_id="modelmerger_save_as_half")
            with gr.Row():
                f["bake_in_vae"] = gr.Dropdown(_vae_choices(ctx), value="None", label="Bake in VAE",
                                               elem_id="modelmerger_bake_in_vae", allow_custom_value=True)
                refresh_vae = gr.Button(**icon_button("refresh"), elem_id="modelmerger_refresh_bake_in_vae", scale=0)
            f["discard_weights"] = gr.Textbox(label="Discard weights with matching name (regular expression)",
                                              elem_id="modelmerger_discard_weights")
            f["overwrite"] = gr.Checkbox(False, label="Overwrite an existing file", elem_id="modelmerger_overwrite")
            merge = gr.Button("Merge", variant="primary", elem_id="modelmerger_merge")
        with gr.Column():
            result = gr.Textbox(label="Result", interactive=False, elem_id="modelmerger_result")
    names = list(f)
    dropdowns = [f["primary"], f["secondary"], f["tertiary"]]

    def refreshed() -> list[Any]:
        ctx.models.refresh()
        choices = _titles(ctx)
        return [gr.update(choices=choices) for _ in dropdowns]

    def work(v: dict[str, Any], request: gr.Request, progress: gr.Progress):
        vae = v.get("bake_in_vae")
        req = MergeRequest(
            primary=v.get("primary") or "", secondary=v.get("secondary") or "", tertiary=v.get("tertiary") or "",
            interp_method=v.get("interp_method") or "Weighted sum",
            multiplier=0.3 if v.get("multiplier") is None else v["multiplier"],
            save_as_half=bool(v.get("save_as_half")), custom_name=v.get("custom_name") or "",
            bake_in_vae=None if not vae or vae == "None" else str(vae),
            discard_weights=v.get("discard_weights") or "", overwrite=bool(v.get("overwrite")))
        try:
            path = run_merge(ctx, req, progress)
        except USER_ERRORS as exc:
            raise user_error(exc) from None
        return [f"Checkpoint saved to {path}", *refreshed()]

    handler = named_handler(names, work)
    handler.__name__ = "merge_checkpoints"
    merge.click(handler, inputs=[f[n] for n in names], outputs=[result, *dropdowns], api_name="merge_checkpoints",
                concurrency_id="gpu")
    refresh.click(refreshed, inputs=None, outputs=dropdowns, api_name="modelmerger_refresh_checkpoints")
    refresh_vae.click(lambda: gr.update(choices=_vae_choices(ctx)), inputs=None, outputs=f["bake_in_vae"],
                      api_name="modelmerger_refresh_vae")
    f["result"] = result
    return f
