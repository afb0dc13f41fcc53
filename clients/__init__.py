"""Clients of a pocketcnn model.

- `clients.predict`: ask a running service what is in a photo (library and CLI, standard library only).
- `clients.ondevice`: the reference on-device client, running the mobile bundle's .tflite like an app does
  (ai-edge-litert, numpy and Pillow; copy the one file into an app project).
- `clients.loadgen`: concurrent keep-alive requests that count failures, for reliability tests.

The browser client is serve/static/index.html. None of these imports the rest of the repository.
Nothing is imported here, so `python -m clients.predict` runs its module once, without a warning.
"""
