"""MaskGate model artefacts, their manifest, and the code that provisions or trains them."""
