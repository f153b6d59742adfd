"""A worker's requests wait for a database connection in order of arrival (identity/pool.py,
Admission): a released connection goes to the longest waiter, never to a request that
arrived after it. With a plain semaphore a newcomer can take the slot while the woken waiter
is still on its way, so one request can wait behind any number of later ones."""

from __future__ import annotations

import threading
import time

from identity.pool import Admission


def queue_waiters(slots: Admission, count: int) -> tuple[list[int], list[threading.Thread]]:
    """`count` threads that each wait for a slot, started one after another; each records its
    number when served and releases at once."""
    served: list[int] = []

    def wait(number: int) -> None:
        assert slots.acquire(timeout=10)
        served.append(number)
        slots.release()

    threads = []
    for number in range(count):
        thread = threading.Thread(target=wait, args=(number,))
        thread.start()
        while len(slots.waiting) < number + 1:  # queued before the next one starts
            time.sleep(0.001)
        threads.append(thread)
    return served, threads


def test_waiters_are_served_in_order_of_arrival() -> None:
    slots = Admission(1)
    assert slots.acquire(timeout=1)
    served, threads = queue_waiters(slots, 8)
    slots.release()
    for thread in threads:
        thread.join(10)
    assert served == list(range(8))
    assert slots.free == 1 and not slots.waiting


def test_a_released_slot_goes_to_the_waiter_not_to_a_newcomer() -> None:
    slots = Admission(1)
    assert slots.acquire(timeout=1)
    served, threads = queue_waiters(slots, 1)
    slots.release()
    assert not slots.acquire(timeout=0), "a newcomer took the slot a waiter was queued for"
    threads[0].join(10)
    assert served == [0]


def test_control_a_plain_semaphore_lets_newcomers_in_first() -> None:
    """The same sequence with threading.Semaphore: the newcomer usually wins the slot."""
    barged = 0
    for _ in range(20):
        slots = threading.Semaphore(1)
        slots.acquire()
        waiter = threading.Thread(target=lambda s=slots: (s.acquire(timeout=10), s.release()))
        waiter.start()
        time.sleep(0.005)  # the waiter is blocked in acquire
        slots.release()
        if slots.acquire(timeout=0):
            barged += 1
            slots.release()
        waiter.join(10)
    assert barged > 0


def test_a_waiter_that_times_out_leaves_its_place_and_no_slot_is_lost() -> None:
    slots = Admission(1)
    assert slots.acquire(timeout=1)
    started = time.monotonic()
    assert not slots.acquire(timeout=0.05)
    assert time.monotonic() - started >= 0.05
    assert not slots.waiting
    slots.release()
    assert slots.acquire(timeout=0) and slots.free == 0
    slots.release()
    assert slots.free == 1
