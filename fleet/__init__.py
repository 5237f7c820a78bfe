"""MaskGate fleet: one registry for many doors, spoken to over MQTT.

The fleet imports the door's own code (signing, message schemas, the store's content hash,
the enrollment pipeline); the door never imports the fleet. Doors and fleet speak only MQTT.
"""

__version__ = "0.1.0"
