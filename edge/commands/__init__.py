"""Sub-commands of `python -m edge`, one module each."""

from edge.commands import bench, calibrate, doctor, evaluate, photos

COMMANDS = (photos, evaluate, calibrate, bench, doctor)
