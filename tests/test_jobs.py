import threading
import time

import pytest

from webui.jobs import Interrupted, Job, JobQueue, QueueFull


def test_progress_and_eta():
    job = Job(job_count=2)
    job.begin()
    job.set_stage(1, 10)
    job.step(5)
    assert job.progress == pytest.approx(0.75)
    job.end()
    assert job.progress == 1.0


def test_queue_runs_one_at_a_time():
    q = JobQueue(concurrency=1, max_size=8)
    active, peak = [0], [0]
    lock = threading.Lock()

    def work(job):
        with lock:
            active[0] += 1
            peak[0] = max(peak[0], active[0])
        time.sleep(0.05)
        with lock:
            active[0] -= 1
        return job.id

    jobs = [Job() for _ in range(4)]
    out = []
    threads = [threading.Thread(target=lambda j=j: out.append(q.run(j, work))) for j in jobs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert peak[0] == 1 and sorted(out) == sorted(j.id for j in jobs)


def test_queue_full():
    q = JobQueue(concurrency=1, max_size=1)
    release = threading.Event()
    started = threading.Event()

    def hold(job):
        started.set()
        release.wait(5)

    t1 = threading.Thread(target=q.run, args=(Job(), hold))
    t1.start()
    started.wait(5)
    waiting = Job()
    t2 = threading.Thread(target=lambda: q.run(waiting, lambda j: None))
    t2.start()
    for _ in range(50):
        if q.waiting():
            break
        time.sleep(0.01)
    with pytest.raises(QueueFull):
        q.run(Job(), lambda j: None)
    release.set()
    t1.join()
    t2.join()


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
        gate.wait(5) if n < concurrency else time.sleep(0.005)

    holders = [threading.Thread(target=q.run, args=(Job(), lambda j, n=n: work(j, n))) for n in range(concurrency)]
    for t in holders:
        t.start()
    while len(q.running()) < concurrency:
        time.sleep(0.005)
    threads = []
    for n in range(concurrency, concurrency + 12):  # queue up one by one, so arrival order is known
        t = threading.Thread(target=q.run, args=(Job(), lambda j, n=n: work(j, n)))
        t.start()
        threads.append(t)
        while len(q.waiting()) < n - concurrency + 1:
            time.sleep(0.002)
        time.sleep(0.03)  # spread arrivals over the 0.1 s wake-up period of waiting jobs
    gate.set()
    for t in holders + threads:
        t.join(10)
    order = started[concurrency:]
    assert sorted(order) == list(range(concurrency, concurrency + 12))
    # slots are granted strictly in order; jobs admitted together may log their start in either order
    assert all(abs(order.index(n) - (n - concurrency)) < concurrency for n in order), order


def test_interrupting_a_waiting_job_lets_the_next_one_start():
    q = JobQueue(concurrency=1)
    gate = threading.Event()
    holder = threading.Thread(target=q.run, args=(Job(), lambda j: gate.wait(5)))
    holder.start()
    while not q.running():
        time.sleep(0.005)
    first, second = Job(), Job()
    results: dict[str, object] = {}

    def run(job, name):
        try:
            results[name] = q.run(job, lambda j: name)
        except Interrupted as exc:
            results[name] = exc

    threads = [threading.Thread(target=run, args=(job, name)) for job, name in ((first, "first"), (second, "second"))]
    threads[0].start()
    while len(q.waiting()) < 1:
        time.sleep(0.002)
    threads[1].start()
    while len(q.waiting()) < 2:
        time.sleep(0.002)
    first.interrupt()
    while len(q.waiting()) > 1:
        time.sleep(0.002)
    gate.set()
    for t in [holder, *threads]:
        t.join(5)
    assert isinstance(results["first"], Interrupted) and results["second"] == "second"
    assert q.waiting() == [] and q.running() == []
