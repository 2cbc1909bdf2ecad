"""The Gradio 6 web UI: ``build_ui(ctx)`` makes the Blocks; one module per tab."""
