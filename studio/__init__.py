"""CORE-Seg Studio: the Gradio app's parts that are not Gradio.

- `studio.users`: the users file (sign-in, roles) and who is asking.
- `studio.overlay`: masks, boxes and clicks drawn over a scan; brush strokes read back as a mask edit.
- `studio.session`: one person's work in progress (kept in `gr.State`, never in module globals).
- `studio.handlers`: the plain functions that both the UI and the named API call.
- `studio.ui`: the Gradio Blocks that wire them together (`app.py` launches it).
"""
