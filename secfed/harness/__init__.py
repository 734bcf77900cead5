"""The local multiprocess harness behind ``secfed simulate``.

It provisions a throwaway consortium, runs the coordinator and every institution as separate
``secfed`` processes on 127.0.0.1, injects client and server failures on request, and checks the
outcome from the files the run leaves (round log, state database). It never imports the ``server``
or ``client`` packages: it drives them exactly as an operator would, through processes and files.
"""

from __future__ import annotations

from secfed.harness.presets import DEFAULT_PRESET, PRESETS, Preset
from secfed.harness.simulate import ServerKill, SimulationOptions, run_simulation

__all__ = ["DEFAULT_PRESET", "PRESETS", "Preset", "ServerKill", "SimulationOptions", "run_simulation"]
