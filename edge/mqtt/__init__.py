"""MQTT for the door: signed requests in; replies, events, state and HA discovery out.

topics.py (every topic string), messages.py (the message contract), signing.py (Ed25519
request signatures), outbox.py (durable QoS 1 queue), discovery.py (Home Assistant),
client.py (MqttService, the paho connection). Knows nothing of the store, vision or relay:
the daemon wires a handler in.
"""
