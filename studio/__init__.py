"""CORE-Seg Studio: the Gradio app's parts.

- `studio.handlers`: `Studio`, the app as a service (people, ownership, predict/refine/submit, review,
  dashboard, admin) that both the UI and the named API call.
- `studio.inputs`: what callers send, checked, with its limits; `studio.scans`: uploads, temporary files, scans.
- `studio.session`: one person's work in progress and the bounded registry of sessions;
  `studio.correction`: the correction being made.
- `studio.users`: the users file (sign-in, roles, throttling); `studio.guard`: per-person file access and
  per-client sign-in throttling in the web server.
- `studio.views`: cards, the reviewer's text and dashboard tables (all user text escaped); `studio.overlay`:
  drawing over a scan.
- `studio.events`: the one sign-in/role/session wrapper of every event; `studio.ui`: one builder per tab;
  `studio.api`: the named API (`app.py` launches it all).
"""
