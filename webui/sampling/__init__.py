"""Sampling: a discrete-sigma denoiser over the checkpoint's noise schedule, sigma
schedules, and k-diffusion-style samplers (A1111's engine), written for this project."""
