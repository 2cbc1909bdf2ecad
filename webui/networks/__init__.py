"""Extra networks used from the prompt: LoRA (``<lora:name:weight>``) and textual inversion."""
