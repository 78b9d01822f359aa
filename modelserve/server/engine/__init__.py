"""The engine a request passes through, transport-neutral: data plane → registry → batcher →
worker pool → worker processes (forked by the zygote), with streamed answers and jobs."""
