"""The local harness behind ``secfed simulate``.

It provisions a throwaway consortium, runs the federation, and checks the outcome from the files the
run leaves (round log, state database). The process backend runs the coordinator and every
institution as separate ``secfed`` processes on 127.0.0.1 and injects client and server failures on
request; it never imports the ``server`` or ``client`` packages, driving them exactly as an operator
would, through processes and files. The Ray backend (:mod:`secfed.harness.ray_backend`) builds the
same parties from the same files in memory (:mod:`secfed.harness.virtual`) and runs them by function
call (:mod:`secfed.harness.inprocess`), importing both packages lazily, as the CLI does.
"""

from __future__ import annotations

from secfed.harness.presets import DEFAULT_PRESET, PRESETS, Preset
from secfed.harness.simulate import ServerKill, SimulationOptions, run_simulation

__all__ = ["DEFAULT_PRESET", "PRESETS", "Preset", "ServerKill", "SimulationOptions", "run_simulation"]
