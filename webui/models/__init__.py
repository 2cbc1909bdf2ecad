"""Model loading: safe file reading, family detection, config inference and conversion.

Entry points: :func:`webui.models.loader.load_components`,
:func:`webui.models.spec.detect_spec`, :func:`webui.models.tiny.build_tiny_components`.
"""
