"""The one wrapper every Gradio event handler goes through: who is calling, may they, which session is theirs,
and what to show when something is refused (see `Events.on`)."""
from __future__ import annotations

import functools
import html
import inspect
import logging

import gradio as gr

from annotation.store import FeedbackError
from studio import handlers as h
from studio.inputs import StudioError
from studio.users import AccessDenied

log = logging.getLogger("coreseg.studio")


class Events:
    """The one sign-in/role/session/error wrapper every event handler goes through."""

    def __init__(self, studio: h.Studio):
        self.studio = studio

    def on(self, action: str | None = None, *, anonymous: bool = False):
        """Decorate `fn(user, sess, *inputs, [evt], [progress])` into a Gradio handler of `*inputs` that
        identifies the caller, checks `action`'s role and passes their session. With `anonymous`, a caller
        who is not signed in gets user=None and sess=None instead of an error."""
        studio = self.studio

        def deco(fn):
            params = list(inspect.signature(fn).parameters.values())[2:]
            inputs = [p.name for p in params if p.name not in ("evt", "progress")]
            wants_evt = any(p.name == "evt" for p in params)
            wants_progress = any(p.name == "progress" for p in params)

            @functools.wraps(fn)
            def inner(*args):
                values = list(args[:len(inputs)])
                rest = list(args[len(inputs):])
                extra = {}
                if wants_evt:
                    extra["evt"] = rest.pop(0)
                request, profile = rest.pop(0), rest.pop(0)
                if wants_progress:
                    progress = rest.pop(0)
                    extra["progress"] = lambda f, d: progress(f, desc=d)
                try:
                    try:
                        user = studio.identify(getattr(request, "username", None),
                                               getattr(profile, "username", None))
                    except AccessDenied:
                        if not anonymous:
                            raise
                        return fn(None, None, *values, **extra)
                    if action:
                        user.require(action)
                    sess = studio.session(user, getattr(request, "session_hash", None))
                    try:
                        return fn(user, sess, *values, **extra)
                    finally:
                        studio.sessions.settle(sess)
                except (StudioError, AccessDenied, FeedbackError) as exc:
                    raise gr.Error(html.escape(str(exc), quote=False), print_exception=False) from None
                except gr.Error:
                    raise
                except Exception:
                    log.exception("handler %s failed", fn.__name__)
                    raise gr.Error("Something went wrong on the server; nothing you entered was lost. Try again.",
                                   print_exception=False) from None

            new = [inspect.Parameter(n, inspect.Parameter.POSITIONAL_OR_KEYWORD) for n in inputs]
            notes = {}
            if wants_evt:
                new.append(inspect.Parameter("evt", inspect.Parameter.POSITIONAL_OR_KEYWORD))
                notes["evt"] = gr.SelectData
            new += [inspect.Parameter("request", inspect.Parameter.POSITIONAL_OR_KEYWORD),
                    inspect.Parameter("profile", inspect.Parameter.POSITIONAL_OR_KEYWORD)]
            notes.update(request=gr.Request, profile=gr.OAuthProfile | None)
            if wants_progress:
                new.append(inspect.Parameter("progress", inspect.Parameter.POSITIONAL_OR_KEYWORD,
                                             default=gr.Progress()))
            del inner.__wrapped__
            inner.__signature__ = inspect.Signature(new)
            inner.__annotations__ = notes
            return inner

        return deco
