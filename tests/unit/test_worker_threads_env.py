"""The thread environment a worker (or the zygote) sets before torch loads."""

from __future__ import annotations

import os

import pytest

from modelserve.worker import process


@pytest.mark.parametrize("user, spin, policy", [
    ({}, str(process.SPIN_COUNT), "PASSIVE"),  # a short spin, then sleep
    ({"OMP_WAIT_POLICY": "ACTIVE"}, None, "ACTIVE"),  # the user's policy, its own spin
    ({"GOMP_SPINCOUNT": "0"}, "0", "PASSIVE"),  # the user's spin
])
def test_openmp_threads_spin_briefly_unless_the_user_chose(monkeypatch, user, spin, policy):
    env = {"PATH": "/usr/bin", **user}
    monkeypatch.setattr(os, "environ", env)
    process.preset_thread_env(3)
    assert env.get("GOMP_SPINCOUNT") == spin and env["OMP_WAIT_POLICY"] == policy
    assert env["OMP_NUM_THREADS"] == env["MKL_NUM_THREADS"] == "3"
