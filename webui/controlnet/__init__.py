"""ControlNet: preprocessors, models and their use in generation."""
