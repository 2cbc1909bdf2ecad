"""Generation workers (``--workers N`` / ``--ray-address ADDR``): the server keeps its one job queue and sends
each generation to a worker process, one per GPU, run by Ray.

- :mod:`~webui.workers.events`: what a worker tells the server about the job it runs (progress, previews,
  the answer) and how the server's job takes it in;
- :mod:`~webui.workers.actor`: the worker itself (its own application context; no Ray import);
- :mod:`~webui.workers.pool`: the workers as the server sees them, which one runs which job, and what
  happens when one is lost (no Ray import);
- :mod:`~webui.workers.ray_executor`: the Ray part, imported only when one of the flags is given.
"""
