"""MaskGate's model kit: train, export, quantise and benchmark its own face embedders.

torch is imported only here and under models/; the daemon (edge/) runs what this kit exports
through ONNX Runtime or TensorRT, described by a manifest entry the exporter writes.

    backbones   iresnet r18/r34/r50/r100 and a light "edge" variant (`get_model`)
    losses      combined margin (ArcFace, CosFace) over a normalised FC head
    config      the typed training config (pydantic, YAML)
    data        person folders → aligned 112×112 crops (the daemon's own pipeline), cached
    train       the training loop: AMP on CUDA, checkpoints, resume, periodic evaluation
    evaluation  verification metrics on held-out identities; the daemon's `edge evaluate`
    export      ONNX with dynamic batch, parity against torch, manifest entry
    quantize    ONNX Runtime static INT8 (QDQ), calibrated on real aligned crops
    tensorrt    TensorRT FP16/INT8 engines for Jetson (optional import)
    bench       FP32 vs INT8 latency and cosine
    progress    a small progress bar on stderr
    export_cli  the commands behind `python -m models.export`

Entry points: `python -m models.train --config models/configs/tiny.yaml` and
`python -m models.export {onnx,int8,tensorrt,bench,evaluate}` (each has `--help`).
"""
