"""The worker process: loads one model version through its handler and serves batches.

Started as a fresh interpreter (``python -m modelserve.worker``), never forked from the
frontend, so torch is imported here only.
"""
