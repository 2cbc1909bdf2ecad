"""Every option key of AUTOMATIC1111 1.10 with A1111's default value, and what each means here.

``GET /sdapi/v1/options`` answers all of them, so clients that read or write any A1111 key work
unchanged. The keys, defaults, types and ranges restate A1111 1.10's ``modules/shared_options.py``
(plus the options its bundled extensions register: Lora, canvas zoom, extra options, Hypertile, SwinIR,
LDSR, ScuNET); the labels and reasons are ours.

Two kinds of key:

* **honoured** -- defined by the core (:func:`webui.settings.core_option_defs`) or a plugin's
  ``register_settings``, with a label and a section in the Settings tab, and used by the code;
* **accepted, no effect here** -- everything else: validated by type, stored, echoed back, listed in
  ``docs/api.md`` with the reason in :func:`no_effect_reason`, not shown in the Settings tab.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any


@dataclass(frozen=True)
class A1111Option:
    key: str
    default: Any
    section: str
    minimum: float | None = None
    maximum: float | None = None
    choices: tuple[Any, ...] | None = None


def _section(name: str, *entries: tuple) -> list[A1111Option]:
    out = []
    for entry in entries:
        key, default, *rest = entry
        extra = rest[0] if rest else {}
        out.append(A1111Option(key, default, name, **extra))
    return out


def _range(lo: float, hi: float) -> dict[str, float]:
    return {"minimum": lo, "maximum": hi}


def a1111_options() -> list[A1111Option]:
    """A1111 1.10's options in its order, by section (A1111's section titles)."""
    return [
        *_section(
            "Saving images/grids",
            ("samples_save", True), ("samples_format", "png"), ("samples_filename_pattern", ""),
            ("save_images_add_number", True),
            ("save_images_replace_action", "Replace", {"choices": ("Replace", "Add number suffix")}),
            ("grid_save", True), ("grid_format", "png"), ("grid_extended_filename", False),
            ("grid_only_if_multiple", True), ("grid_prevent_empty_spots", False), ("grid_zip_filename_pattern", ""),
            ("n_rows", -1, _range(-1, 16)), ("font", ""), ("grid_text_active_color", "#000000"),
            ("grid_text_inactive_color", "#999999"), ("grid_background_color", "#ffffff"),
            ("save_images_before_face_restoration", False), ("save_images_before_highres_fix", False),
            ("save_images_before_color_correction", False), ("save_mask", False), ("save_mask_composite", False),
            ("jpeg_quality", 80, _range(1, 100)), ("webp_lossless", False), ("export_for_4chan", True),
            ("img_downscale_threshold", 4.0), ("target_side_length", 4000), ("img_max_size_mp", 200.0),
            ("use_original_name_batch", True), ("use_upscaler_name_as_suffix", False),
            ("save_selected_only", True), ("save_write_log_csv", True), ("save_init_img", False),
            ("temp_dir", ""), ("clean_temp_dir_at_start", False), ("save_incomplete_images", False),
            ("notification_audio", True), ("notification_volume", 100, _range(0, 100)),
        ),
        *_section(
            "Paths for saving",
            ("outdir_samples", ""), ("outdir_txt2img_samples", "outputs/txt2img-images"),
            ("outdir_img2img_samples", "outputs/img2img-images"), ("outdir_extras_samples", "outputs/extras-images"),
            ("outdir_grids", ""), ("outdir_txt2img_grids", "outputs/txt2img-grids"),
            ("outdir_img2img_grids", "outputs/img2img-grids"), ("outdir_save", "log/images"),
            ("outdir_init_images", "outputs/init-images"),
        ),
        *_section(
            "Saving to a directory",
            ("save_to_dirs", True), ("grid_save_to_dirs", True), ("use_save_to_dirs_for_ui", False),
            ("directories_filename_pattern", "[date]"), ("directories_max_prompt_words", 8, _range(1, 20)),
        ),
        *_section(
            "Upscaling",
            ("ESRGAN_tile", 192, _range(0, 512)), ("ESRGAN_tile_overlap", 8, _range(0, 48)),
            ("realesrgan_enabled_models", ["R-ESRGAN 4x+", "R-ESRGAN 4x+ Anime6B"]),
            ("dat_enabled_models", ["DAT x2", "DAT x3", "DAT x4"]), ("DAT_tile", 192, _range(0, 512)),
            ("DAT_tile_overlap", 8, _range(0, 48)), ("upscaler_for_img2img", None),
            ("set_scale_by_when_changing_upscaler", False),
        ),
        *_section(
            "Face restoration",
            ("face_restoration", False), ("face_restoration_model", "CodeFormer"),
            ("code_former_weight", 0.5, _range(0, 1)), ("face_restoration_unload", False),
        ),
        *_section(
            "System",
            ("auto_launch_browser", "Local", {"choices": ("Disable", "Local", "Remote")}),
            ("enable_console_prompts", False), ("show_warnings", False), ("show_gradio_deprecation_warnings", True),
            ("memmon_poll_rate", 8, _range(0, 40)), ("samples_log_stdout", False), ("multiple_tqdm", True),
            ("enable_upscale_progressbar", True), ("print_hypernet_extra", False), ("list_hidden_files", True),
            ("disable_mmap_load_safetensors", False), ("hide_ldm_prints", True), ("dump_stacks_on_signal", False),
        ),
        *_section(
            "Profiler",
            ("profiling_enable", False), ("profiling_activities", ["CPU"]), ("profiling_record_shapes", True),
            ("profiling_profile_memory", True), ("profiling_with_stack", True), ("profiling_filename", "trace.json"),
        ),
        *_section(
            "API",
            ("api_enable_requests", True), ("api_forbid_local_requests", True), ("api_useragent", ""),
        ),
        *_section(
            "Training",
            ("unload_models_when_training", False), ("pin_memory", False), ("save_optimizer_state", False),
            ("save_training_settings_to_txt", True), ("dataset_filename_word_regex", ""),
            ("dataset_filename_join_string", " "), ("training_image_repeats_per_epoch", 1),
            ("training_write_csv_every", 500), ("training_xattention_optimizations", False),
            ("training_enable_tensorboard", False), ("training_tensorboard_save_images", False),
            ("training_tensorboard_flush_every", 120),
        ),
        *_section(
            "Stable Diffusion",
            ("sd_model_checkpoint", None), ("sd_checkpoints_limit", 1, _range(1, 10)),
            ("sd_checkpoints_keep_in_cpu", True), ("sd_checkpoint_cache", 0, _range(0, 10)), ("sd_unet", "Automatic"),
            ("enable_quantization", False), ("emphasis", "Original"), ("enable_batch_seeds", True),
            ("comma_padding_backtrack", 20, _range(0, 74)), ("sdxl_clip_l_skip", False),
            ("CLIP_stop_at_last_layers", 1, _range(1, 12)), ("upcast_attn", False),
            ("randn_source", "GPU", {"choices": ("GPU", "CPU", "NV")}), ("tiling", False),
            ("hires_fix_refiner_pass", "second pass", {"choices": ("first pass", "second pass", "both passes")}),
        ),
        *_section(
            "Stable Diffusion XL",
            ("sdxl_crop_top", 0), ("sdxl_crop_left", 0), ("sdxl_refiner_low_aesthetic_score", 2.5),
            ("sdxl_refiner_high_aesthetic_score", 6.0),
        ),
        *_section("Stable Diffusion 3", ("sd3_enable_t5", False)),
        *_section(
            "VAE",
            ("sd_vae_checkpoint_cache", 0, _range(0, 10)), ("sd_vae", "Automatic"),
            ("sd_vae_overrides_per_model_preferences", True), ("auto_vae_precision_bfloat16", False),
            ("auto_vae_precision", True), ("sd_vae_encode_method", "Full", {"choices": ("Full", "TAESD")}),
            ("sd_vae_decode_method", "Full", {"choices": ("Full", "TAESD")}),
        ),
        *_section(
            "img2img",
            ("inpainting_mask_weight", 1.0, _range(0, 1)), ("initial_noise_multiplier", 1.0, _range(0, 1.5)),
            ("img2img_extra_noise", 0.0, _range(0, 1)), ("img2img_color_correction", False),
            ("img2img_fix_steps", False), ("img2img_background_color", "#ffffff"),
            ("img2img_editor_height", 720, _range(80, 1600)), ("img2img_sketch_default_brush_color", "#ffffff"),
            ("img2img_inpaint_mask_brush_color", "#ffffff"), ("img2img_inpaint_sketch_default_brush_color", "#ffffff"),
            ("return_mask", False), ("return_mask_composite", False),
            ("img2img_batch_show_results_limit", 32, _range(-1, 1000)), ("overlay_inpaint", True),
        ),
        *_section(
            "Optimizations",
            ("cross_attention_optimization", "Automatic"), ("s_min_uncond", 0.0, _range(0, 15)),
            ("s_min_uncond_all", False), ("token_merging_ratio", 0.0, _range(0, 0.9)),
            ("token_merging_ratio_img2img", 0.0, _range(0, 0.9)), ("token_merging_ratio_hr", 0.0, _range(0, 0.9)),
            ("pad_cond_uncond", False), ("pad_cond_uncond_v0", False), ("persistent_cond_cache", True),
            ("batch_cond_uncond", True),
            ("fp8_storage", "Disable", {"choices": ("Disable", "Enable for SDXL", "Enable")}),
            ("cache_fp16_weight", False),
        ),
        *_section(
            "Compatibility",
            ("auto_backcompat", True), ("use_old_emphasis_implementation", False),
            ("use_old_karras_scheduler_sigmas", False), ("no_dpmpp_sde_batch_determinism", False),
            ("use_old_hires_fix_width_height", False), ("hires_fix_use_firstpass_conds", False),
            ("use_old_scheduling", False), ("use_downcasted_alpha_bar", False),
            ("refiner_switch_by_sample_steps", False),
        ),
        *_section(
            "Interrogate",
            ("interrogate_keep_models_in_memory", False), ("interrogate_return_ranks", False),
            ("interrogate_clip_num_beams", 1, _range(1, 16)), ("interrogate_clip_min_length", 24, _range(1, 128)),
            ("interrogate_clip_max_length", 48, _range(1, 256)), ("interrogate_clip_dict_limit", 1500),
            ("interrogate_clip_skip_categories", []), ("interrogate_deepbooru_score_threshold", 0.5, _range(0, 1)),
            ("deepbooru_sort_alpha", True), ("deepbooru_use_spaces", True), ("deepbooru_escape", True),
            ("deepbooru_filter_tags", ""),
        ),
        *_section(
            "Extra Networks",
            ("extra_networks_show_hidden_directories", True), ("extra_networks_dir_button_function", False),
            ("extra_networks_hidden_models", "When searched", {"choices": ("Always", "When searched", "Never")}),
            ("extra_networks_default_multiplier", 1.0, _range(0, 2)), ("extra_networks_card_width", 0),
            ("extra_networks_card_height", 0), ("extra_networks_card_text_scale", 1.0, _range(0, 2)),
            ("extra_networks_card_show_desc", True), ("extra_networks_card_description_is_html", False),
            ("extra_networks_card_order_field", "Path",
             {"choices": ("Path", "Name", "Date Created", "Date Modified")}),
            ("extra_networks_card_order", "Ascending", {"choices": ("Ascending", "Descending")}),
            ("extra_networks_tree_view_style", "Dirs", {"choices": ("Tree", "Dirs")}),
            ("extra_networks_tree_view_default_enabled", True), ("extra_networks_tree_view_default_width", 180),
            ("extra_networks_add_text_separator", " "), ("ui_extra_networks_tab_reorder", ""),
            ("textual_inversion_print_at_load", False), ("textual_inversion_add_hashes_to_infotext", True),
            ("sd_hypernetwork", "None"),
        ),
        *_section(
            "Prompt editing",
            ("keyedit_precision_attention", 0.1, _range(0.01, 0.2)), ("keyedit_precision_extra", 0.05, _range(0.01, 0.2)),
            ("keyedit_delimiters", ".,\\/!?%^*;:{}=`~() "),
            ("keyedit_delimiters_whitespace", ["Tab", "Carriage Return", "Line Feed"]), ("keyedit_move", True),
            ("disable_token_counters", False), ("include_styles_into_token_counters", True),
        ),
        *_section(
            "Gallery",
            ("return_grid", True), ("do_not_show_images", False), ("js_modal_lightbox", True),
            ("js_modal_lightbox_initially_zoomed", True), ("js_modal_lightbox_gamepad", False),
            ("js_modal_lightbox_gamepad_repeat", 250), ("sd_webui_modal_lightbox_icon_opacity", 1.0, _range(0, 1)),
            ("sd_webui_modal_lightbox_toolbar_opacity", 0.9, _range(0, 1)), ("gallery_height", ""),
            ("open_dir_button_choice", "Subdirectory",
             {"choices": ("Output Root", "Subdirectory", "Subdirectory (even temp dir)")}),
        ),
        *_section(
            "UI alternatives",
            ("compact_prompt_box", False), ("samplers_in_dropdown", True), ("dimensions_and_batch_together", True),
            ("sd_checkpoint_dropdown_use_short", False), ("hires_fix_show_sampler", False),
            ("hires_fix_show_prompts", False), ("txt2img_settings_accordion", False),
            ("img2img_settings_accordion", False), ("interrupt_after_current", True),
        ),
        *_section(
            "User interface",
            ("localization", "None"), ("quicksettings_list", ["sd_model_checkpoint"]), ("ui_tab_order", []),
            ("hidden_tabs", []), ("ui_reorder_list", []), ("gradio_theme", "Default"), ("gradio_themes_cache", True),
            ("show_progress_in_title", True), ("send_seed", True), ("send_size", True),
            ("enable_reloading_ui_scripts", False),
        ),
        *_section(
            "Infotext",
            ("enable_pnginfo", True), ("save_txt", False), ("add_model_name_to_info", True),
            ("add_model_hash_to_info", True), ("add_vae_name_to_info", True), ("add_vae_hash_to_info", True),
            ("add_user_name_to_info", False), ("add_version_to_infotext", True), ("disable_weights_auto_swap", True),
            ("infotext_skip_pasting", []),
            ("infotext_styles", "Apply if any", {"choices": ("Ignore", "Apply", "Discard", "Apply if any")}),
        ),
        *_section(
            "Live previews",
            ("show_progressbar", True), ("live_previews_enable", True),
            ("live_previews_image_format", "png", {"choices": ("jpeg", "png", "webp")}),
            ("show_progress_grid", True), ("show_progress_every_n_steps", 10, _range(-1, 32)),
            ("show_progress_type", "Approx NN", {"choices": ("Full", "Approx NN", "Approx cheap", "TAESD")}),
            ("live_preview_allow_lowvram_full", False),
            ("live_preview_content", "Prompt", {"choices": ("Combined", "Prompt", "Negative prompt")}),
            ("live_preview_refresh_period", 1000), ("live_preview_fast_interrupt", False),
            ("js_live_preview_in_modal_lightbox", False), ("prevent_screen_sleep_during_generation", True),
        ),
        *_section(
            "Sampler parameters",
            ("hide_samplers", []), ("eta_ddim", 0.0, _range(0, 1)), ("eta_ancestral", 1.0, _range(0, 1)),
            ("ddim_discretize", "uniform", {"choices": ("uniform", "quad")}),
            ("s_churn", 0.0, _range(0, 100)), ("s_tmin", 0.0, _range(0, 10)), ("s_tmax", 0.0, _range(0, 999)),
            ("s_noise", 1.0, _range(0, 1.1)), ("sigma_min", 0.0), ("sigma_max", 0.0), ("rho", 0.0),
            ("eta_noise_seed_delta", 0), ("always_discard_next_to_last_sigma", False),
            ("sgm_noise_multiplier", False), ("uni_pc_variant", "bh1", {"choices": ("bh1", "bh2", "vary_coeff")}),
            ("uni_pc_skip_type", "time_uniform", {"choices": ("time_uniform", "time_quadratic", "logSNR")}),
            ("uni_pc_order", 3, _range(1, 50)), ("uni_pc_lower_order_final", True),
            ("sd_noise_schedule", "Default", {"choices": ("Default", "Zero Terminal SNR")}),
            ("skip_early_cond", 0.0, _range(0, 1)), ("beta_dist_alpha", 0.6, _range(0.01, 1)),
            ("beta_dist_beta", 0.6, _range(0.01, 1)),
        ),
        *_section(
            "Postprocessing",
            ("postprocessing_enable_in_main_ui", []), ("postprocessing_disable_in_extras", []),
            ("postprocessing_operation_order", []), ("upscaling_max_images_in_cache", 5, _range(0, 10)),
            ("postprocessing_existing_caption_action", "Ignore", {"choices": ("Ignore", "Keep", "Prepend", "Append")}),
        ),
        *_section(
            "Hidden options",
            ("disabled_extensions", []), ("disable_all_extensions", "none", {"choices": ("none", "extra", "all")}),
            ("restore_config_state_file", ""), ("sd_checkpoint_hash", ""),
        ),
        # ---- options registered by A1111's bundled extensions (extensions-builtin/)
        *_section(
            "Lora (A1111 built-in extension)",
            ("sd_lora", "None"), ("lora_preferred_name", "Alias from file", {"choices": ("Filename", "Alias from file")}),
            ("lora_add_hashes_to_infotext", True), ("lora_bundled_ti_to_infotext", True), ("lora_show_all", False),
            ("lora_hide_unknown_for_versions", []), ("lora_in_memory_limit", 0, _range(0, 128)),
            ("lora_not_found_warning_console", False), ("lora_not_found_gradio_warning", False),
        ),
        *_section(
            "Canvas hotkeys (A1111 built-in extension)",
            ("canvas_hotkey_zoom", "Alt"), ("canvas_hotkey_adjust", "Ctrl"), ("canvas_hotkey_shrink_brush", "Q"),
            ("canvas_hotkey_grow_brush", "W"), ("canvas_hotkey_move", "F"), ("canvas_hotkey_fullscreen", "S"),
            ("canvas_hotkey_reset", "R"), ("canvas_hotkey_overlap", "O"), ("canvas_show_tooltip", True),
            ("canvas_auto_expand", True), ("canvas_blur_prompt", False), ("canvas_disabled_functions", ["Overlap"]),
        ),
        *_section(
            "Extra options (A1111 built-in extension)",
            ("extra_options_txt2img", []), ("extra_options_img2img", []), ("extra_options_cols", 1, _range(1, 20)),
            ("extra_options_accordion", False),
        ),
        *_section(
            "Hypertile (A1111 built-in extension)",
            ("hypertile_enable_unet", False), ("hypertile_enable_unet_secondpass", False),
            ("hypertile_max_depth_unet", 3, _range(0, 3)), ("hypertile_max_tile_unet", 256, _range(0, 512)),
            ("hypertile_swap_size_unet", 3, _range(0, 64)), ("hypertile_enable_vae", False),
            ("hypertile_max_depth_vae", 3, _range(0, 3)), ("hypertile_max_tile_vae", 128, _range(0, 512)),
            ("hypertile_swap_size_vae", 3, _range(0, 64)),
        ),
        *_section(
            "Other upscalers (A1111 built-in extensions)",
            ("SWIN_tile", 192, _range(16, 512)), ("SWIN_tile_overlap", 8, _range(0, 48)), ("SWIN_torch_compile", False),
            ("ldsr_steps", 100, _range(1, 200)), ("ldsr_cached", False),
            ("SCUNET_tile", 256, _range(0, 512)), ("SCUNET_tile_overlap", 8, _range(0, 64)),
        ),
    ]


#: Keys whose default here differs from A1111's on purpose, and why (also in docs/api.md).
DELIBERATE_DEFAULTS: Mapping[str, str] = MappingProxyType({
    "sd_model_checkpoint": "the title of the loaded checkpoint (A1111 shows it too once a model is loaded)",
})

_SECTION_REASONS: Mapping[str, str] = MappingProxyType({
    "System": "about A1111's console, memory monitor and launcher; this server logs start-up, requests "
              "(--api-log) and errors itself",
    "Profiler": "the torch profiler is not wired in; use benchmarks/ and py-spy",
    "API": "image URLs in API requests are switched by the --allow-image-urls flag (public addresses only); "
           "these keys cannot loosen that",
    "Training": "A1111's textual-inversion/hypernetwork training tab is not provided (yet)",
    "Interrogate": "interrogation (CLIP/DeepBooru) is not provided: it needs models that are downloaded",
    "Extra Networks": "the Extra networks panel shows one card per file (name, preview picture) without A1111's "
                      "tree view, sorting and card size choices; a card inserts its LoRA tag or its embedding's name",
    "Gallery": "layout of A1111's gallery and lightbox; Gradio's gallery is used",
    "UI alternatives": "layout choices of A1111's UI",
    "User interface": "layout and theme of A1111's UI",
    "Postprocessing": "postprocessing operations run from the Extras tab and Restore faces only",
    "Hidden options": "A1111 bookkeeping",
    "Lora (A1111 built-in extension)": "LoRA files are used from the prompt (<lora:name:weight>); the card "
                                       "browser these options tune is not provided",
    "Canvas hotkeys (A1111 built-in extension)": "Gradio's own image editor and its keys are used",
    "Extra options (A1111 built-in extension)": "layout of A1111's UI",
    "Hypertile (A1111 built-in extension)": "Hypertile is not implemented; SDPA attention is used",
    "Other upscalers (A1111 built-in extensions)": "SwinIR, LDSR and ScuNET are not provided",
})

_KEY_REASONS: Mapping[str, str] = MappingProxyType({
    "grid_only_if_multiple": "grids are made by scripts only (X/Y/Z, prompt matrix), never of one image",
    "grid_prevent_empty_spots": "script grids are laid out by their axes",
    "grid_zip_filename_pattern": "there is no zip download",
    "n_rows": "script grids are laid out by their axes",
    "font": "grid legends use Pillow's built-in font",
    "grid_text_active_color": "grid legends are drawn in black on white",
    "grid_text_inactive_color": "grid legends are drawn in black on white",
    "grid_background_color": "grid legends are drawn in black on white",
    "save_images_before_face_restoration": "not implemented",
    "save_images_before_highres_fix": "not implemented",
    "save_images_before_color_correction": "not implemented",
    "save_mask": "not implemented",
    "save_mask_composite": "not implemented",
    "export_for_4chan": "no extra JPEG copies are written",
    "img_downscale_threshold": "no extra JPEG copies are written",
    "target_side_length": "no extra JPEG copies are written",
    "use_upscaler_name_as_suffix": "the Extras batch always keeps the original names",
    "save_selected_only": "there is no Save button; every image is saved as it is made",
    "save_write_log_csv": "there is no Save button; every image is saved as it is made",
    "temp_dir": "Gradio's own cache is used for temporary files",
    "clean_temp_dir_at_start": "Gradio's own cache is used for temporary files",
    "save_incomplete_images": "interrupted images are saved like finished ones",
    "notification_audio": "no sound is played",
    "notification_volume": "no sound is played",
    "outdir_save": "there is no Save button",
    "use_save_to_dirs_for_ui": "there is no Save button",
    "realesrgan_enabled_models": "every Real-ESRGAN file in models/RealESRGAN is listed",
    "dat_enabled_models": "DAT upscalers are not provided",
    "DAT_tile": "DAT upscalers are not provided",
    "DAT_tile_overlap": "DAT upscalers are not provided",
    "set_scale_by_when_changing_upscaler": "a UI convenience of A1111's Extras tab",
    "face_restoration_unload": "restorer networks stay loaded; they are small",
    "sd_checkpoints_limit": "one checkpoint is on the device; sd_checkpoint_cache keeps others in RAM",
    "sd_checkpoints_keep_in_cpu": "one checkpoint is on the device; sd_checkpoint_cache keeps others in RAM",
    "sd_unet": "separate U-Net files are not supported",
    "enable_quantization": "not implemented (it changes seeds in A1111)",
    "enable_batch_seeds": "batches always give the same images as single runs (each image has its own noise)",
    "sdxl_clip_l_skip": "Clip skip applies to SD 1.x/2.x text encoders",
    "upcast_attn": "attention runs in the model's precision; use --precision full for float32",
    "hires_fix_refiner_pass": "the refiner runs in the first pass",
    "sdxl_refiner_low_aesthetic_score": "SDXL refiner checkpoints (with aesthetic score conditioning) are not "
                                        "supported",
    "sdxl_refiner_high_aesthetic_score": "SDXL refiner checkpoints (with aesthetic score conditioning) are not "
                                         "supported",
    "sd3_enable_t5": ("SD 3.x uses T5-XXL whenever a T5 file is present (in the checkpoint or chosen in "
                      "'VAE / Text encoder'), as Forge does; without one it runs on zeros"),
    "sd_vae_overrides_per_model_preferences": "there are no per-model VAE preferences; sd_vae applies",
    "auto_vae_precision_bfloat16": "a VAE that makes NaNs is retried in float32",
    "auto_vae_precision": "a VAE that makes NaNs is always retried in float32",
    "sd_vae_encode_method": "the full VAE always encodes (TAESD is used for previews)",
    "sd_vae_decode_method": "the full VAE always decodes (TAESD is used for previews)",
    "img2img_editor_height": "Gradio's image editor sizes itself",
    "img2img_sketch_default_brush_color": "Gradio's image editor has its own colour picker",
    "img2img_inpaint_mask_brush_color": "Gradio's image editor has its own colour picker",
    "img2img_inpaint_sketch_default_brush_color": "Gradio's image editor has its own colour picker",
    "return_mask": "not implemented",
    "return_mask_composite": "not implemented",
    "img2img_batch_show_results_limit": "the batch tab reports counts and paths",
    "overlay_inpaint": "the original is always overlaid outside the mask (A1111's default)",
    "cross_attention_optimization": "attention is chosen with the --attention flag",
    "s_min_uncond": "negative guidance minimum sigma is not implemented",
    "s_min_uncond_all": "negative guidance minimum sigma is not implemented",
    "token_merging_ratio": "token merging (ToMe) is not implemented: images are made without it",
    "token_merging_ratio_img2img": "token merging (ToMe) is not implemented",
    "token_merging_ratio_hr": "token merging (ToMe) is not implemented",
    "pad_cond_uncond": "not implemented",
    "pad_cond_uncond_v0": "not implemented",
    "persistent_cond_cache": "prompts are encoded once per job",
    "batch_cond_uncond": "cond and uncond are always batched together",
    "cache_fp16_weight": "FP8 weights are not supported",
    "use_old_karras_scheduler_sigmas": "not implemented",
    "no_dpmpp_sde_batch_determinism": "DPM++ SDE is always deterministic per image",
    "use_old_hires_fix_width_height": "not implemented",
    "hires_fix_use_firstpass_conds": "not implemented",
    "refiner_switch_by_sample_steps": "the refiner switches by sampling steps already",
    "textual_inversion_print_at_load": "loaded embeddings are listed by /sdapi/v1/embeddings",
    "textual_inversion_add_hashes_to_infotext": "TI hashes are always written",
    "sd_hypernetwork": "hypernetworks are not supported",
    "add_user_name_to_info": "user names are never written into images",
    "disable_weights_auto_swap": "pasted infotext never switches the checkpoint in the UI",
    "infotext_skip_pasting": "not implemented",
    "infotext_styles": "styles are not inferred from pasted prompts",
    "show_progressbar": "the progress bar is always shown",
    "live_previews_image_format": "previews are sent as PNG",
    "show_progress_grid": "the preview shows the first image of the batch",
    "live_preview_allow_lowvram_full": "Full previews are allowed in every memory mode",
    "live_preview_content": "previews show the prompt's image",
    "live_preview_refresh_period": "the UI polls once a second",
    "live_preview_fast_interrupt": "interrupts stop within one sampling step",
    "js_live_preview_in_modal_lightbox": "layout of A1111's lightbox",
    "prevent_screen_sleep_during_generation": "a browser feature of A1111's JavaScript",
    "hide_samplers": "every sampler is listed",
    "ddim_discretize": "DDIM uses A1111's uniform discretisation",
    "sigma_min": "set by the schedule type; custom sigma ranges are not supported",
    "sigma_max": "set by the schedule type; custom sigma ranges are not supported",
    "rho": "set by the schedule type; custom sigma ranges are not supported",
    "always_discard_next_to_last_sigma": "not implemented",
    "sgm_noise_multiplier": "not implemented",
    "uni_pc_variant": "UniPC runs A1111's defaults (bh1, time_uniform, order 3, lower order final)",
    "uni_pc_skip_type": "UniPC runs A1111's defaults (bh1, time_uniform, order 3, lower order final)",
    "uni_pc_order": "UniPC runs A1111's defaults (bh1, time_uniform, order 3, lower order final)",
    "uni_pc_lower_order_final": "UniPC runs A1111's defaults (bh1, time_uniform, order 3, lower order final)",
    "skip_early_cond": "not implemented",
    "beta_dist_alpha": "the Beta schedule uses A1111's 0.6/0.6",
    "beta_dist_beta": "the Beta schedule uses A1111's 0.6/0.6",
})


def no_effect_reason(option: A1111Option) -> str:
    """Why ``option`` is accepted but has no effect here (for keys no code defines)."""
    reason = _KEY_REASONS.get(option.key) or _SECTION_REASONS.get(option.section)
    return reason or "not implemented"


def catalogue() -> dict[str, A1111Option]:
    return {o.key: o for o in a1111_options()}


def a1111_option_defs(defined: Iterable[str]) -> list[Any]:
    """OptionDefs for the A1111 keys that no code defines (``defined``): typed, stored, no effect."""
    from webui.settings import OptionDef

    taken = set(defined)
    out = []
    for o in a1111_options():
        if o.key in taken:
            continue
        out.append(OptionDef(o.key, o.default, o.key, o.section, choices=o.choices, minimum=o.minimum,
                             maximum=o.maximum, note=no_effect_reason(o)))
    return out
