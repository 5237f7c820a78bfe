"""Perception stages: landmarks, alignment, quality, mask classification, embedding.

Nothing here knows about MQTT, the template store or the relay.
"""
