"""The mask database: db.json and the mask images drawn by draw.py (see edge.vision.maskrender)."""
