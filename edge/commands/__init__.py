"""Sub-commands of `python -m edge`, one module each."""

from edge.commands import (
    bench,
    calibrate,
    doctor,
    door,
    evaluate,
    maskify,
    pad,
    photos,
    relay,
    sign,
)

COMMANDS = (photos, evaluate, calibrate, bench, pad, doctor, door, relay, sign, maskify)
