"""The built-in ``detect`` processor: ONNX object detectors by configuration.

- :mod:`.onnxinfo`: an ONNX file's declarations, read without a runtime;
- :mod:`.layout`: the input and output layouts, decoding, NMS;
- :mod:`.labels`: class names (COCO-80, a file, the model's own);
- :mod:`.options`: the options and the checks ``check-config`` runs;
- :mod:`.processor`: :class:`~.processor.DetectProcessor` (ONNX Runtime, letterboxing, batches);
- :mod:`.track` and :mod:`.objects`: detections to tracked objects and their events.

Importing this package loads no runtime: ONNX Runtime is imported by the worker
that runs a model (:func:`.processor.load_session`).
"""
