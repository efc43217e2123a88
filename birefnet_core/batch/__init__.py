"""Batch jobs: sources (files, folders, sequences, videos) -> frames -> masks -> sinks.

One layer that both engines use: the local engine (:func:`run_local`, one process) and the Ray
engine (:func:`birefnet_core.batch.ray_engine.run_ray`, the ``ray`` extra). Guarantees, whatever
the engine: no input is ever overwritten, outputs keep the inputs' relative paths, every output
is written atomically, an unreadable input is recorded and skipped, a re-run skips complete
outputs, and ``OUT/birefnet-manifest.jsonl`` records each input's outcome.

PyAV and Ray are imported only when a job needs them.
"""

from __future__ import annotations

from .job import (CHUNK_BYTES, CHUNK_FRAMES, JobSpec, Plan, Segmenter, Tally, check_job,
                  parse_background, plan_job, prepare_output_dir)
from .local import Events, run_local
from .manifest import MANIFEST_NAME, Record, read_manifest
from .sinks import OUTPUTS, render
from .sources import (IMAGE_SUFFIXES, VIDEO_SUFFIXES, Job, chunks_of_same_size, expand_inputs,
                      plan_outputs)

__all__ = [
    "CHUNK_BYTES", "CHUNK_FRAMES", "JobSpec", "Plan", "Segmenter", "Tally", "check_job",
    "parse_background", "plan_job", "prepare_output_dir", "Events", "run_local",
    "MANIFEST_NAME", "Record", "read_manifest", "OUTPUTS", "render", "IMAGE_SUFFIXES",
    "VIDEO_SUFFIXES", "Job", "chunks_of_same_size", "expand_inputs", "plan_outputs",
]
