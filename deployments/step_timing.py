"""A vLLM V1 scheduler that writes down every engine step: what it scheduled and when.

Used by deployments/calibrate.py (and usable with `vllm serve --scheduler-cls`): the engine core
process instantiates the scheduler class named in `SchedulerConfig.scheduler_cls`, so a subclass
of vLLM's own `Scheduler` sees every step from the inside, in the process that runs the loop,
whatever the front end (LLM, AsyncLLM, the OpenAI server, ray.serve.llm). Scheduling itself is
untouched: the subclass only reads the scheduler's output and the requests' counters.

One JSON line per step that scheduled work goes to the file named by env `CALIBRATE_STEP_LOG`
(inherited by the engine core process; unset: nothing is written):

    {"t0": schedule() entered, "t1": update_from_output() returned (time.monotonic(), seconds),
     "busy": requests were still unfinished after the step (the engine loop went straight on to
     the next one; has_requests() would also count the finished ones whose cleanup rides on one
     more, empty, step),
     "prefill": tokens computed for requests not yet decoding (prompt chunks, recomputation),
     "decode": requests computing their one newest token, "kv": sum over scheduled requests of
     the tokens their KV covers after the step (engine_model.py's kv_tokens_in_batch),
     "reqs": requests scheduled}

The same three numbers `EngineModel.step()` reports (common/engine_model.py), so a step of the real
engine and a step of the model are comparable one for one. common/step_fit.py turns the lines
into timed steps (`steps_from_records`).
"""

from __future__ import annotations

import json
import os
import time

from vllm.v1.core.sched.async_scheduler import AsyncScheduler
from vllm.v1.core.sched.scheduler import Scheduler

STEP_LOG_ENV = "CALIBRATE_STEP_LOG"


class _StepTimingMixin:
    """Records each step around `schedule()` and `update_from_output()`; changes nothing."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        path = os.environ.get(STEP_LOG_ENV)
        # Line-buffered: every step reaches the file as it ends (the engine process may be killed).
        self._step_log = open(path, "a", buffering=1) if path else None  # noqa: SIM115
        self._open_steps: dict[int, dict] = {}  # id(scheduler_output) -> its record (async: 2 in flight)

    def schedule(self, *args, **kwargs):
        t0 = time.monotonic()
        output = super().schedule(*args, **kwargs)
        if self._step_log is None or output.total_num_scheduled_tokens == 0:
            return output
        prefill = decode = kv = 0
        for req_id, new in output.num_scheduled_tokens.items():
            request = self.requests[req_id]
            after = request.num_computed_tokens  # schedule() already advanced it by `new`
            before = after - new
            # Decoding: past the prompt and computing one token (the one sampled last step).
            # Anything else is prefill: a prompt chunk, or a preempted request's recomputation.
            if new == 1 and before >= request.num_prompt_tokens:
                decode += 1
            else:
                prefill += new
            kv += after
        self._open_steps[id(output)] = {"t0": t0, "prefill": prefill, "decode": decode, "kv": kv,
                                        "reqs": len(output.num_scheduled_tokens)}
        return output

    def update_from_output(self, scheduler_output, model_runner_output):
        outputs = super().update_from_output(scheduler_output, model_runner_output)
        record = self._open_steps.pop(id(scheduler_output), None)
        if record is not None and self._step_log is not None:
            record["t1"] = time.monotonic()
            record["busy"] = bool(self.has_unfinished_requests())
            self._step_log.write(json.dumps(record) + "\n")
        return outputs

    def shutdown(self) -> None:
        if self._step_log is not None:
            self._step_log.close()
            self._step_log = None
        super().shutdown()


class StepTimingScheduler(_StepTimingMixin, Scheduler):
    """vLLM's synchronous scheduler (CPU engines, `async_scheduling=False`), recording steps."""


class AsyncStepTimingScheduler(_StepTimingMixin, AsyncScheduler):
    """vLLM's async scheduler (the GPU default), recording steps."""


def scheduler_for(async_scheduling: bool) -> type[Scheduler]:
    """The recording scheduler that matches the engine's own choice."""
    return AsyncStepTimingScheduler if async_scheduling else StepTimingScheduler
