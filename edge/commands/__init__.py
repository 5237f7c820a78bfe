"""Sub-commands of `python -m edge`, one module each."""

from edge.commands import (
    bench,
    calibrate,
    doctor,
    door,
    evaluate,
    maskify,
    photos,
    relay,
    sign,
)

COMMANDS = (photos, evaluate, calibrate, bench, doctor, door, relay, sign, maskify)
