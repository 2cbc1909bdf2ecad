import threading

import pytest

from tests.step_gate import WAIT
from webui.jobs import Interrupted, Job, JobQueue, QueueFull


def test_progress_and_eta():
    job = Job(job_count=2)
    job.begin()
    job.set_stage(1, 10)
    job.step(5)
    assert job.progress == pytest.approx(0.75)
    job.end()
    assert job.progress == 1.0


def _until(q: JobQueue, predicate) -> None:
    """Wait for the queue's state (``predicate(waiting, running)``); the bound is only a safety net."""
    assert q.wait_for(predicate, WAIT), (q.waiting(), q.running())


def test_queue_runs_one_at_a_time():
    q = JobQueue(concurrency=1, max_size=8)
    gate = threading.Event()
    seen: list[tuple[str, int]] = []  # (job, how many jobs ran at its start)

    def work(job):
        seen.append((job.id, len(q.running())))
        gate.wait(WAIT)
        return job.id

    jobs = [Job() for _ in range(4)]
    out = []
    threads = [threading.Thread(target=lambda j=j: out.append(q.run(j, work))) for j in jobs]
    for t in threads:
        t.start()
    # all four arrived: one runs (held at the gate), three wait, though the slot is busy for as long as we like
    _until(q, lambda waiting, running: len(waiting) == 3 and len(running) == 1)
    assert len(seen) == 1
    gate.set()
    for t in threads:
        t.join(WAIT)
    assert [n for _, n in seen] == [1] * 4 and sorted(out) == sorted(j.id for j in jobs)


def test_queue_full():
    q = JobQueue(concurrency=1, max_size=1)
    release = threading.Event()

    t1 = threading.Thread(target=q.run, args=(Job(), lambda job: release.wait(WAIT)))
    t1.start()
    _until(q, lambda waiting, running: len(running) == 1)
    waiting = Job()
    t2 = threading.Thread(target=lambda: q.run(waiting, lambda j: None))
    t2.start()
    _until(q, lambda w, running: w == [waiting])
    with pytest.raises(QueueFull):
        q.run(Job(), lambda j: None)
    release.set()
    t1.join(WAIT)
    t2.join(WAIT)
    assert q.waiting() == [] and q.running() == []


def test_interrupt_is_per_owner_and_waiting_job_can_be_cancelled():
    q = JobQueue()
    a, b = Job(owner="a"), Job(owner="b")
    with q.slot(a):
        assert q.interrupt(owner="b") == 0
        assert not a.interrupted
        assert q.interrupt(owner="a") == 1
        assert a.interrupted
    b.interrupt()
    with pytest.raises(Interrupted):
        with q.slot(b):
            pass
    assert q.interrupt() == 0  # nothing running: a harmless no-op


@pytest.mark.parametrize("concurrency", [1, 2])
def test_queue_serves_jobs_in_arrival_order(concurrency):
    """First come, first served: under load no job is overtaken by later ones (A1111's queue is FIFO too)."""
    q = JobQueue(concurrency=concurrency, max_size=32)
    gate = threading.Event()
    started: list[int] = []
    lock = threading.Lock()

    def work(job, n):
        with lock:
            started.append(n)
        if n < concurrency:
            gate.wait(WAIT)

    holders = [threading.Thread(target=q.run, args=(Job(), lambda j, n=n: work(j, n))) for n in range(concurrency)]
    for t in holders:
        t.start()
    _until(q, lambda waiting, running: len(running) == concurrency)
    threads = []
    for n in range(concurrency, concurrency + 12):  # queue up one by one, so arrival order is known
        t = threading.Thread(target=q.run, args=(Job(), lambda j, n=n: work(j, n)))
        t.start()
        threads.append(t)
        _until(q, lambda waiting, running, k=n - concurrency + 1: len(waiting) == k)
    gate.set()
    for t in holders + threads:
        t.join(WAIT)
    order = started[concurrency:]
    assert sorted(order) == list(range(concurrency, concurrency + 12))
    # slots are granted strictly in order; jobs admitted together may log their start in either order
    assert all(abs(order.index(n) - (n - concurrency)) < concurrency for n in order), order


def test_interrupting_a_waiting_job_lets_the_next_one_start():
    q = JobQueue(concurrency=1)
    gate = threading.Event()
    holder = threading.Thread(target=q.run, args=(Job(), lambda j: gate.wait(WAIT)))
    holder.start()
    _until(q, lambda waiting, running: len(running) == 1)
    first, second = Job(), Job()
    results: dict[str, object] = {}

    def run(job, name):
        try:
            results[name] = q.run(job, lambda j: name)
        except Interrupted as exc:
            results[name] = exc

    threads = [threading.Thread(target=run, args=(job, name)) for job, name in ((first, "first"), (second, "second"))]
    threads[0].start()
    _until(q, lambda waiting, running: waiting == [first])
    threads[1].start()
    _until(q, lambda waiting, running: waiting == [first, second])
    first.interrupt()
    _until(q, lambda waiting, running: waiting == [second])  # it left the queue while the slot was still taken
    threads[0].join(WAIT)
    assert isinstance(results["first"], Interrupted) and len(q.running()) == 1
    gate.set()
    for t in [holder, *threads]:
        t.join(WAIT)
    assert results["second"] == "second"
    assert q.waiting() == [] and q.running() == []
