"""`edged model pull`: fetching a published model (an onnx-community ONNX release or a GGUF) over
HTTP, from the Hugging Face hub or a plain URL, with resume and checksums, and installing it.

hub.py talks HTTP (the hub's tree API, tokens, redirects, errors in words), plan.py decides
which files a source means, download.py fetches one file into a `.part` with resume and
checksum, pull.py runs the whole pull and installs the model only when everything checked.

A package of its own below edged/models: the test-model cache (tests/model_cache.py) keys its
builds on the export code in edged/models/*.py, and nothing here changes what an export makes.
"""
