"""Face restoration: the registry filled by the ``register_face_restorers`` hook."""
