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
