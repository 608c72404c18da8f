"""Loops for the bench's tests, built by import path like the real ones: steady fakes on a fake clock, and
loops that fail the ways a worker can fail (raise, crash, hang, get killed, run out of memory)."""

import os
import signal
import time


class Clock:
    now = 0.0

    def __call__(self):
        return self.now


CLOCK = Clock()
ORDER: list[str] = []


class FakeLoop:
    """Each step 'costs' a fixed engine time plus a fixed loop overhead on CLOCK (patched in as perf_counter)."""

    def __init__(self, name="fake", engine_time=0.009, overhead=0.001):
        self.name, self.engine_time, self.overhead = name, engine_time, overhead
        self.engine_seconds = 0.0
        self.steps = 0

    def step(self):
        ORDER.append(self.name)
        CLOCK.now += self.engine_time + self.overhead
        self.engine_seconds += self.engine_time
        self.steps += 1
        return 1.0 / self.steps

    def describe(self):
        return {"engine": "fake", "name": self.name}


def fake_loop(name="fake", engine_time=0.009, overhead=0.001, setup_time=0.0):
    CLOCK.now += setup_time
    return FakeLoop(name, engine_time, overhead)


class FaultyLoop:
    """A real-time loop that misbehaves at step ``at``: ``raise``, ``crash`` (SIGSEGV), ``hang``, ``kill``
    (SIGKILL, as the kernel's OOM killer sends) or ``memory`` (MemoryError under an address-space limit)."""

    def __init__(self, fault, at):
        self.fault, self.at = fault, at
        self.engine_seconds = 0.0
        self.steps = 0

    def step(self):
        self.steps += 1
        if self.steps == self.at:
            if self.fault == "raise":
                raise ValueError("the loop raised on purpose")
            if self.fault == "crash":
                os.kill(os.getpid(), signal.SIGSEGV)
            if self.fault == "hang":
                time.sleep(3600)
            if self.fault == "kill":
                os.kill(os.getpid(), signal.SIGKILL)
            if self.fault == "memory":
                import resource

                resource.setrlimit(resource.RLIMIT_AS, (4 * 2**30, resource.RLIM_INFINITY))
                bytearray(8 * 2**30)
        time.sleep(0.002)
        self.engine_seconds += 0.002
        return 1.0

    def describe(self):
        return {"engine": "faulty", "fault": self.fault}


def faulty_loop(fault, at, content=None, style=None):
    return FaultyLoop(fault, at)
